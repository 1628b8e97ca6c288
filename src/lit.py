"""The LightningModule that trains every classifier of the project.

It is built from plain config values (dicts, floats), saved as hyperparameters,
so `LitClassifier.load_from_checkpoint(path)` rebuilds the network from the
checkpoint alone; the network is `self.model` (state-dict keys `model.*`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.plugins.io import TorchCheckpointIO

from . import files
from .certify.rules import margins
from .models import build_model
from .mondeq.splitting import ConvergenceTally

SOLVER_KEYS = ("fwd_iters", "fwd_residual", "fwd_seconds", "bwd_iters", "bwd_residual", "bwd_seconds")
EVAL_SETS = ("test", "train")  # the order of the dataloaders given to trainer.test
TRAIN_MARGIN_ERROR = "train/margin_error"  # logged by TrainMarginError, monitored by MarginStop
log = logging.getLogger(__name__)


class LitClassifier(L.LightningModule):
    def __init__(self, model: Mapping, m: float, splitting: Mapping, dataset: Mapping,
                 optim: Mapping, margin_gamma: float = 10.0, seed: int | None = None,
                 protocol: Mapping | None = None, trainer: Mapping | None = None):
        # seed, protocol and trainer (the training length) are recorded, so that a checkpoint
        # names every setting its weights came from (src.run refuses to resume under others)
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model, float(m), splitting, tuple(dataset["in_shape"]),
                                 int(dataset["num_classes"]))
        self.is_mondeq = hasattr(self.model, "solver_stats")
        # The weights at initialisation, kept in checkpoints (`initial_state_dict`) for the
        # generalization bounds with norms measured from initialisation.
        self.initial_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        # Training totals behind metrics.json; kept in checkpoints so a resumed run counts all epochs.
        self.totals = {"seconds": 0.0, "steps": 0, "fwd_iters": 0.0, "bwd_iters": 0.0}
        # every counted solve of the training steps (not alpha tuning, not evaluation), also checkpointed
        self.train_tallies = {"forward": ConvergenceTally(), "backward": ConvergenceTally()}
        self._epoch_start = 0.0
        self._eval: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # --- training ----------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if batch_idx == 0 and self.hparams.splitting.get("tune_alpha") and hasattr(self.model, "tune_alpha"):
            alpha = self.model.tune_alpha(batch[0])
            self.log("train/alpha", float(alpha))
        if self.is_mondeq:
            self.model.reset_convergence()  # from here on, this step's solves only

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        error = (logits.argmax(1) != y).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/error", error, prog_bar=True)
        # the epoch's means, beside the per-step values (a dashboard's per-epoch curves)
        # (over every rank's batches under DDP: the epoch's, not rank zero's share)
        self.log_dict({"epoch/train_loss": loss, "epoch/train_error": error}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=len(y))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # After the backward pass, so the backward solve's stats are this step's too.
        if not self.is_mondeq:
            return
        stats = self.model.solver_stats()
        self.log_dict({f"solver/{k}": float(stats[k]) for k in SOLVER_KEYS})
        self.totals["steps"] += 1
        self.totals["fwd_iters"] += float(stats["fwd_iters"])
        self.totals["bwd_iters"] += float(stats["bwd_iters"])
        for what, tally in self.model.mon.tallies.items():
            self.train_tallies[what].merge(tally)

    def on_train_epoch_end(self) -> None:
        self.totals["seconds"] += time.perf_counter() - self._epoch_start
        self.log("epoch/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, sync_dist=True)

    # --- the test split after every epoch (trainer.limit_val_batches of it; the profiles set it) --
    # Its loader draws a seed from torch's generator: restored after it, so that watching the test
    # error changes no batch of the training (a monitor, not a setting: src/schema.py declares it NOTHING).
    def on_validation_start(self) -> None:
        self._rng_before_validation = torch.get_rng_state()

    def on_validation_end(self) -> None:
        torch.set_rng_state(self._rng_before_validation)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log_dict({"epoch/test_loss": F.cross_entropy(logits, y),
                       "epoch/test_error": (logits.argmax(1) != y).float().mean()},
                      on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))

    def configure_optimizers(self):
        cfg = self.hparams.optim
        opt = torch.optim.Adam(self.parameters(), lr=cfg["lr"])
        schedule = cfg["schedule"]
        if schedule == "none":
            return opt
        if schedule == "step":  # monotone_op_net: StepLR(step, gamma=0.1), stepped once per epoch
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["step_size"], gamma=cfg["gamma"])
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if schedule == "onecycle":
            # torch's one-cycle (it also cycles Adam's beta1 0.95 -> 0.85 -> 0.95, as the original's
            # momentum schedule); the original interpolated lr by hand over the same shape.
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg["lr"], total_steps=int(self.trainer.estimated_stepping_batches))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        raise ValueError(f"optim.schedule must be step, onecycle or none, got {schedule!r}")

    # --- evaluation (trainer.test with the test set, then the training set) --
    def on_test_epoch_start(self) -> None:
        if self.is_mondeq:
            self.model.reset_convergence()
        # n, errors, margin errors, on the module's device (no host sync per batch)
        self._eval = {s: torch.zeros(3, dtype=torch.int64, device=self.device) for s in EVAL_SETS}

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        margin = margins(self(x), y)
        counts = self._eval[EVAL_SETS[dataloader_idx]]
        counts[0] += len(y)
        counts[1:] += torch.stack([(margin <= 0).sum(), (margin < self.hparams.margin_gamma).sum()])

    def on_test_epoch_end(self) -> None:
        # Under DDP each rank counted its own shard (src.run gives unpadded samplers): sum them, so
        # every rank holds the counts of the whole split.
        self._eval = {s: self._across_ranks(c, "sum") for s, c in self._eval.items()}

    def _across_ranks(self, value: torch.Tensor, op: str) -> torch.Tensor:
        return self.trainer.strategy.reduce(value, reduce_op=op) if self.trainer.world_size > 1 else value

    def _tally_across_ranks(self, tally: ConvergenceTally) -> ConvergenceTally:
        if self._trainer is None or self.trainer.world_size == 1:
            return tally
        counts = self._across_ranks(torch.tensor([tally.solves, tally.samples, tally.converged], device=self.device),
                                    "sum")
        worst = self._across_ranks(torch.tensor(tally.worst_residual, dtype=torch.float64, device=self.device), "max")
        return ConvergenceTally(int(counts[0]), int(counts[1]), int(counts[2]), float(worst))

    def evaluation(self) -> dict[str, float]:
        """test_error, train_error and margin_error of the last trainer.test, and of how many examples."""
        (n_test, err_test, _), (n_train, err_train, margin_train) = (self._eval[s].tolist() for s in EVAL_SETS)
        # how many examples the rates are of (trainer.limit_test_batches limits them; under DDP per process)
        return {"test_error": err_test / n_test, "train_error": err_train / n_train,
                "margin_error": margin_train / n_train, "evaluated": {"test": n_test, "train": n_train}}

    def training_summary(self) -> dict[str, float | None]:
        steps = self.totals["steps"]
        return {"seconds": self.totals["seconds"],
                "fwd_iters": self.totals["fwd_iters"] / steps if steps else None,
                "bwd_iters": self.totals["bwd_iters"] / steps if steps else None}

    def convergence(self) -> dict | None:
        """The training steps' solves, and those of the last trainer.test, of every rank (monDEQs; None
        otherwise). Under DDP a collective: every rank calls it."""
        if not self.is_mondeq:
            return None
        return {stage: {what: self._tally_across_ranks(t).record() for what, t in tallies.items()}
                for stage, tallies in (("training", self.train_tallies), ("evaluation", self.model.mon.tallies))}

    # --- checkpoints -------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["totals"] = dict(self.totals)
        checkpoint["train_tallies"] = {what: asdict(t) for what, t in self.train_tallies.items()}
        checkpoint["initial_state_dict"] = self.initial_state
        # The RNG state, so that a resumed run draws the same batches as an uninterrupted one
        # (shuffling and augmentation draw from torch's CPU generator only).
        checkpoint["torch_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.totals.update(checkpoint.get("totals", {}))
        for what, fields in checkpoint.get("train_tallies", {}).items():
            # a checkpoint of before per-sample counts counted each solve once: as one sample
            self.train_tallies[what] = ConvergenceTally(**{"samples": fields.get("solves", 0), **fields})
        if "initial_state_dict" in checkpoint:
            self.initial_state = checkpoint["initial_state_dict"]
        # Only when a fit resumes (not in load_from_checkpoint): Lightning restores the checkpoint
        # before it draws the first epoch's loader seeds, so the draws continue as if uninterrupted.
        rng = checkpoint.get("torch_rng")
        if rng is not None and self._trainer is not None and self.trainer.state.fn == "fit":
            torch.set_rng_state(rng)


# --- the margin protocol (paper 5.2): train until the training margin error is below a threshold --

class TrainMarginError(Callback):
    """Logs `train/margin_error` after every training epoch: the fraction of the training set
    (`loader`, in order, not augmented) with margin f_y - max_{j != y} f_j < gamma, in eval mode.

    It draws no random numbers from the training's generators, so the run's batches stay the same.
    """

    def __init__(self, loader, gamma: float):
        self.loader, self.gamma = loader, float(gamma)

    @torch.no_grad()
    def margin_error(self, module: L.LightningModule) -> float:
        was_training = module.training
        module.eval()
        n = bad = 0
        with torch.random.fork_rng(devices=[]):  # a DataLoader iterator draws a seed from torch's RNG
            for x, y in self.loader:
                x, y = x.to(module.device), y.to(module.device)
                n += len(y)
                bad += int((margins(module(x), y) < self.gamma).sum())
        module.train(was_training)
        return bad / n

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # every rank measures the whole set with the same weights: the mean over ranks is that value
        module.log(TRAIN_MARGIN_ERROR, self.margin_error(module), on_step=False, on_epoch=True, prog_bar=True,
                   sync_dist=True)


class EpochLine(Callback):
    """One line per epoch in the app's log and console, for runs without Lightning's progress bar (DVC)."""

    KEYS = ("epoch/train_loss", "epoch/train_error", "epoch/test_error", TRAIN_MARGIN_ERROR)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        found = {k.split("/")[-1]: float(trainer.callback_metrics[k]) for k in self.KEYS if k in trainer.callback_metrics}
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        log.info(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: "
                 + " ".join(f"{k} {v:.4f}" for k, v in found.items())
                 + f" lr {lr:.3g} ({time.perf_counter() - self._start:.1f} s)")


class MarginStop(EarlyStopping):
    """Stops training after the first epoch whose `train/margin_error` is below `threshold`.

    Lightning's EarlyStopping with only its stopping threshold (no patience); a run resumed
    from a checkpoint saved after it stopped stays stopped (no further epoch is trained).
    """

    def __init__(self, threshold: float):
        super().__init__(monitor=TRAIN_MARGIN_ERROR, mode="min", stopping_threshold=float(threshold),
                         patience=2 ** 62, check_on_train_epoch_end=True, strict=True)

    @property
    def reached(self) -> bool:
        return self.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.reached:
            trainer.should_stop = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing beside the file and swapping it in (src/files.py).

    Lightning 2.6's own writer goes through an fsspec transaction whose temporary file lies in the system's
    temp dir: it is moved into place, which on another file system (a /tmp in memory, a run dir on a
    network disk) is a copy into the final name, so a kill mid-copy leaves a truncated last.ckpt.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options: not supported by a local checkpoint")
        # a file object, not a path: torch.save names the archive's records after a path's file name,
        # so the temporary name would change the bytes
        files.replace(path, lambda f: torch.save(checkpoint, f))
