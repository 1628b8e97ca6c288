"""Load weights from our checkpoints or from the original code's state dicts.

Layouts are told apart by their keys:
- ours (a Lightning checkpoint: `state_dict` with keys `model.<...>`),
- a bare state dict of our networks,
- monotone_op_net / lipschitz_mondeq monDEQs (`mon.linear_module.<...>`),
- DNN/CNN baselines saved as nn.Sequential (`1.weight`, ...), which is our layout.
"""
from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

log = logging.getLogger(__name__)

ORIGINAL_PREFIX = "mon.linear_module."
OUR_PREFIX = "mon.operator."
LIGHTNING_PREFIX = "model."


class CheckpointLayoutError(CheckpointError):
    """A state dict whose keys match no known layout of the configured model."""


class CheckpointShapeError(CheckpointError):
    """A weight whose shape differs from the configured model's: a model of another size."""

    def __init__(self, name: str, saved: tuple[int, ...], built: tuple[int, ...]):
        super().__init__(f"{name} has shape {list(saved)} in the checkpoint but {list(built)} in the configured model")
        self.name, self.saved, self.built = name, saved, built


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_MAGIC = b"\x80"      # torch.save's legacy format: a pickle (protocol >= 2)


def _first_sentence(err: Exception) -> str:
    text = str(err).strip().split("\n")[0]
    return text.split(". ")[0] or type(err).__name__


def check_archive(path: Path) -> None:
    """Refuse a zip checkpoint whose entries would make torch.load allocate more than the file holds.

    torch's reader allocates each entry's declared uncompressed size and inflates into it, so one
    deflated entry of a 1 MB file can take gigabytes. torch.save stores every entry uncompressed,
    which makes the file's own size the cap: stored bytes lie inside the file, so no entry, and no
    sum of entries, can be larger than it in a real checkpoint, whatever the checkpoint's size.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()  # the central directory only: nothing is inflated
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or damaged ({_first_sentence(err)})") from None
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"checkpoint {path}: entry {entry.filename} is compressed, which torch.save never "
                                  f"does (it stores entries as they are); refused unread (it declares "
                                  f"{entry.file_size} bytes inflated)")
        if entry.file_size > size:
            raise CheckpointError(f"checkpoint {path}: entry {entry.filename} declares {entry.file_size} bytes, "
                                  f"more than the whole file ({size} bytes); refused unread")
    declared = sum(entry.file_size for entry in entries)
    if declared > size:
        raise CheckpointError(f"checkpoint {path}: its entries declare {declared} bytes in all, more than the "
                              f"whole file ({size} bytes); refused unread")


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint at `path`, read with torch's safe loader (tensors and plain values only).

    Every way a file can fail to be one is a CheckpointError that says which. A zip archive's entry
    sizes are checked before torch reads it (check_archive). The legacy pickle format needs no such
    check: its storages are allocated as declared but untouched until filled from the file, and
    torch refuses a declared size the file does not hold (tests/test_checkpoints.py measures both).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the checkpoint file (e.g. {path}/model.ckpt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head == ZIP_MAGIC or head[:1] == PICKLE_MAGIC):
        raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint "
                              f"({'empty' if not head else 'neither a torch.save zip archive nor a pickle'})")
    if head == ZIP_MAGIC:
        check_archive(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, which would run the file's code: not ours to suggest
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain values, which "
                              f"the safe loader refuses ({_first_sentence(err)})") from None
    except Exception as err:  # noqa: BLE001 - whatever the reader trips on inside a damaged file
        raise CheckpointError(f"checkpoint {path} is truncated or damaged ({_first_sentence(err)})") from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict or a "
                              f"Lightning checkpoint")
    problem = _layout_problem(checkpoint)
    if problem:
        raise CheckpointError(f"checkpoint {path} is no checkpoint of a network: {problem}")
    return checkpoint


def _layout_problem(checkpoint: Mapping) -> str | None:
    """What of a checkpoint's sections the loaders read is not what they expect: weights as name -> tensor
    (the state dict, or the bare file, and initial_state_dict), hyper_parameters and its model as mappings."""
    def weights(section, where: str) -> str | None:
        if not isinstance(section, Mapping):
            return f"its {where} is a {type(section).__name__}, not a mapping of names to tensors"
        wrong = next((k for k, v in section.items() if not isinstance(v, torch.Tensor)), None)
        return None if wrong is None else f"its {where} entry {wrong!r} is a {type(section[wrong]).__name__}, not a tensor"

    lightning = "state_dict" in checkpoint
    for key, check in (("state_dict", weights), ("initial_state_dict", weights)):
        if key in checkpoint and (found := check(checkpoint[key], key)):
            return found
    hparams = checkpoint.get("hyper_parameters")
    if hparams is not None and not isinstance(hparams, Mapping):
        return f"its hyper_parameters is a {type(hparams).__name__}, not a mapping"
    for key in ("model", "splitting", "dataset"):
        if hparams is not None and key in hparams and not isinstance(hparams[key], Mapping):
            return f"its hyper_parameters.{key} is a {type(hparams[key]).__name__}, not a mapping"
    if not lightning:  # a bare state dict: every entry a weight
        return weights({k: v for k, v in checkpoint.items() if k not in ("hyper_parameters",)}, "state dict")
    return None


def _candidates(raw: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Every reading of the keys that a known layout allows."""
    out = {"ours": dict(raw)}
    if any(k.startswith(LIGHTNING_PREFIX) for k in raw):
        out["lightning"] = {k[len(LIGHTNING_PREFIX):]: v for k, v in raw.items() if k.startswith(LIGHTNING_PREFIX)}
    if any(k.startswith(ORIGINAL_PREFIX) for k in raw):
        out["monotone_op_net"] = {(OUR_PREFIX + k[len(ORIGINAL_PREFIX):] if k.startswith(ORIGINAL_PREFIX) else k): v
                                  for k, v in raw.items()}
    return out


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights of other shapes than `model`'s, or with an Inf or NaN (a diverged training,
    whose every bound and prediction would be NaN)."""
    built = model.state_dict()
    for name, value in state.items():
        if tuple(value.shape) != tuple(built[name].shape):
            raise CheckpointShapeError(name, tuple(value.shape), tuple(built[name].shape))
    for name, value in state.items():
        finite = torch.isfinite(value)
        if not finite.all():
            raise CheckpointError(f"the checkpoint's {name} holds {int((~finite).sum())} Inf or NaN values of "
                                  f"{value.numel()}: the training that wrote it diverged; allowed: finite weights")
    # the single-conv operator's scale of A^T A: I - W >= m I holds only for g >= 0, and every bound and
    # certificate of the model rests on it
    for name, value in state.items():
        if name.endswith("operator.g") and float(value) < 0:
            raise CheckpointError(f"the checkpoint's {name} is {float(value):g} < 0: its W is then not strongly "
                                  f"monotone with m, so no bound of it holds; allowed: g >= 0")


def load_weights(model: nn.Module, checkpoint: Mapping) -> str:
    """Load a checkpoint (Lightning dict or any known state-dict layout) into `model`.

    Returns the name of the layout found; raises CheckpointLayoutError listing
    the missing and unexpected keys when no layout matches, and a CheckpointError when
    the weights do not fit `model` (check_fits).
    """
    raw = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    expected = set(model.state_dict())
    candidates = _candidates(raw)
    for layout, state in candidates.items():
        if set(state) == expected:
            check_fits(model, state)
            model.load_state_dict(state)
            return layout
    closest = min(candidates.values(), key=lambda s: len(set(s) ^ expected))
    missing = sorted(expected - set(closest))
    unexpected = sorted(set(closest) - expected)
    raise CheckpointLayoutError(
        f"the checkpoint matches no known layout for {type(model).__name__} "
        f"(tried {sorted(candidates)}); missing keys: {missing}; unexpected keys: {unexpected}")


# A model loaded from a checkpoint that does not record its settings (the original code's layouts)
# is refused when it misclassifies more than this fraction of the test split: with 10 classes a
# trained model of the paper's sizes errs on 1-35%, and the typical cause of more is a wrong m
# (the operator W = (1 - m) I - A^T A + B - B^T is rebuilt from m) or a wrong model size.
POOR_MODEL_ERROR = 0.5


@dataclass(frozen=True)
class Loaded:
    model: nn.Module     # in eval mode
    path: str
    sha256: str          # the checkpoint file's content
    recorded: bool       # it records its training settings (ours); False: a foreign layout
    initial_state: Mapping | None  # the weights at initialisation, when recorded (generalization bounds)


def check_recorded(path: Path, hparams: Mapping, cfg) -> None:
    """Refuse a checkpoint whose recorded model, m or data (the keys src/schema.py declares `of_checkpoint`)
    differ from the configuration's."""
    from omegaconf import OmegaConf

    from .models import MONDEQ_MODELS
    from .provenance import describe, differing
    from .keys import RUN
    from .schema import values

    mondeq = cfg.model.name in MONDEQ_MODELS
    now = values(OmegaConf.to_container(cfg, resolve=True), RUN, mondeq=mondeq, of_checkpoint=True)
    before = values(dict(hparams), RUN, mondeq=mondeq, of_checkpoint=True)
    keys = differing(now, before)
    if keys:
        raise CheckpointError(f"checkpoint {path} was trained with other settings than given "
                              f"({describe(keys, now, before)}); give the settings it records, or another ckpt=")


def load_model(cfg, run_dir: Path, m_given: bool = True) -> Loaded:
    """The model of `cfg` with the weights of cfg.ckpt (else <run_dir>/model.ckpt).

    Our checkpoints must match the configured model, m and dataset; a foreign one (no recorded
    settings) of a monDEQ needs `m_given` (m set on the command line), since a wrong m loads
    without complaint and scales every bound.
    """
    from .models import MONDEQ_MODELS, build_model
    from .provenance import sha256

    path = Path(cfg.ckpt) if cfg.ckpt else run_dir / "model.ckpt"
    if not cfg.ckpt and not path.exists():
        raise CheckpointError(f"{path} does not exist: train the model first (python -m src.run with the same "
                              f"overrides), or give ckpt=FILE")
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if hparams:
        check_recorded(path, hparams, cfg)
    elif cfg.model.name in MONDEQ_MODELS and not m_given:
        raise CheckpointError(f"checkpoint {path} does not record the m it was trained with; give it on the "
                              f"command line (m=VALUE): the weights load under any m, and a wrong one changes "
                              f"every bound")
    model = build_model(cfg.model, cfg.m, cfg.splitting, tuple(cfg.dataset.in_shape), cfg.dataset.num_classes)
    try:
        layout = load_weights(model, checkpoint)
    except CheckpointShapeError as err:
        raise CheckpointError(f"checkpoint {path}: {err}: {setting_that_fits(cfg, err)}") from None
    log.info(f"loaded {path} ({layout} layout)")
    return Loaded(model.eval(), str(path), sha256(path), bool(hparams), checkpoint.get("initial_state_dict"))


def setting_that_fits(cfg, err: CheckpointShapeError) -> str:
    """Which setting to change so that the model's `err.name` takes the checkpoint's shape.

    Tries each size key of the model (and the class count) with the checkpoint's value in place of
    the model's, rebuilding the model: the commonest slip is a wrong model.width or model.channels.
    """
    from omegaconf import OmegaConf

    from .models import MODELS, build_model

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    settings = {f"model.{k}": model_cfg.get(k) for k in sorted(MODELS[cfg.model.name].fields)}
    settings["dataset.num_classes"] = int(cfg.dataset.num_classes)
    changes = [(b, s) for b, s in zip(err.built, err.saved) if b != s]
    for key, now in settings.items():
        for value in _replacements(now, changes):
            group, field = key.split(".")
            trial = {**model_cfg, field: value} if group == "model" else model_cfg
            classes = value if key == "dataset.num_classes" else cfg.dataset.num_classes
            try:
                shape = build_model(trial, cfg.m, cfg.splitting, tuple(cfg.dataset.in_shape),
                                    classes).state_dict()[err.name].shape
            except (ValueError, KeyError):
                continue
            if tuple(shape) == err.saved:
                return f"set {key}={_override(value)} (now {_override(now)}), as the checkpoint was trained"
    return f"set the sizes the checkpoint was trained with ({', '.join(settings)} or dataset.in_shape)"


def _replacements(now, changes):
    """`now` (a size or a list of sizes) with one model value of `changes` put to the checkpoint's."""
    for built, saved in changes:
        if isinstance(now, int) and now == built:
            yield saved
        if isinstance(now, list):
            yield from (now[:i] + [saved] + now[i + 1:] for i, v in enumerate(now) if v == built)


def _override(value) -> str:
    return f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)


def check_not_poor(loaded: Loaded, test_error: float | None, accept: bool) -> None:
    """Refuse a foreign checkpoint that classifies the test split far worse than a trained model does."""
    if loaded.recorded or test_error is None or test_error <= POOR_MODEL_ERROR or accept:
        return
    raise CheckpointError(f"checkpoint {loaded.path} misclassifies {test_error:.1%} of the test split (more than "
                          f"{POOR_MODEL_ERROR:.0%}): check m (it is not recorded in this layout) and the model "
                          f"size (model.*); bound.accept_poor_model=true uses it anyway")


def model_from_checkpoint(path: str | Path) -> nn.Module:
    """The network of one of our Lightning checkpoints, rebuilt from its saved hyperparameters alone."""
    from .models import build_model

    checkpoint = read_checkpoint(path)
    h = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if not h:
        raise CheckpointError(f"{path} holds no hyperparameters (not a checkpoint of src.run); "
                              f"give the model's config instead")
    model = build_model(h["model"], float(h["m"]), h["splitting"], tuple(h["dataset"]["in_shape"]),
                        int(h["dataset"]["num_classes"]))
    load_weights(model, checkpoint)
    return model.eval()
