"""The flat summaries (DVC metrics files, wandb summary) and the progress lines of long loops."""
from __future__ import annotations

import json
import logging

from src import summary
from src.progress import ticking


def test_bounds_summary_keeps_scalars_and_the_class_pair_matrix_by_its_largest_entry():
    record = {"test_error": 0.1, "upper": {"theorem1": 2.0, "sdp_pairwise": [[0, 3.0], [3.0, 0]]},
              "lower": {"grad_norm": 0.5}, "details": {"sdp_pairwise": {"value": 3.0}},
              "generalization": {"log10_complexity": 4.5, "pac_bayes": 12.0}, "ckpt": "model.ckpt",
              "seconds": {"theorem1": 0.2}}
    assert summary.bounds(record) == {"test_error": 0.1, "upper/theorem1": 2.0, "upper/sdp_pairwise": 3.0,
                                      "lower/grad_norm": 0.5, "generalization/log10_complexity": 4.5}
    assert summary.seconds(record) == {"seconds/theorem1": 0.2}


def test_robustness_summary_at_three_radii_or_all():
    eps = [0.1, 0.2, 0.3, 0.4, 0.5]
    record = {"certified_curves": {"theorem1/paper": {"eps": eps, "accuracy": [0.9, 0.8, 0.7, 0.6, 0.5]}},
              "pgd": {"eps": [1.0], "accuracy": [0.4], "clean_accuracy": 0.95}}
    assert summary.robustness(record) == {"clean_accuracy": 0.95, "certified/theorem1/paper@0.1": 0.9,
                                          "certified/theorem1/paper@0.3": 0.7, "certified/theorem1/paper@0.5": 0.5,
                                          "pgd@1": 0.4}
    assert len(summary.robustness(record, keep=list)) == 1 + 5 + 1
    assert summary.curves(record)[-1] == ["pgd", 1.0, 0.4] and len(summary.curves(record)) == 6


def test_training_summary_and_its_file(tmp_path):
    metrics = {"test_error": 0.2, "train_error": 0.1, "margin_error": 0.3, "epochs": 2, "seconds": 1.5,
               "model": {"name": "mon_fc"}, "fwd_iters": None,
               "convergence": {"training": {"forward": {"converged_fraction": 1.0}, "backward": {"converged_fraction": 0.5}},
                               "evaluation": {"forward": {"converged_fraction": None}}}}
    flat = summary.training(metrics)
    assert flat == {"test_error": 0.2, "train_error": 0.1, "margin_error": 0.3, "epochs": 2, "seconds": 1.5,
                    "converged/training": 0.5}
    path = summary.write(tmp_path, "run", flat)
    assert path.name == "summary_run.json" and json.loads(path.read_text()) == flat


def test_ticking_logs_every_interval_and_yields_every_item(caplog):
    with caplog.at_level(logging.INFO, logger="src.progress"):
        assert list(ticking(range(3), 3, "test error", every=0.0)) == [0, 1, 2]
        assert list(ticking(range(3), 3, "quiet", every=1e9)) == [0, 1, 2]
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "test error: 1/3 batches", "test error: 2/3 batches", "test error: 3/3 batches"]


def test_an_exact_curve_is_summarised_with_both_sides_and_its_undecided_count():
    record = {"certified_curves": {"exact/linf": {"eps": [0.01, 0.05], "accuracy": [0.9, 0.6],
                                                  "accuracy_upper": [0.95, 0.7],
                                                  "status": {"undecided": [5, 10]}}}}
    assert summary.robustness(record) == {
        "certified/exact/linf@0.01": 0.9, "certified/exact/linf/upper@0.01": 0.95,
        "certified/exact/linf/undecided@0.01": 5, "certified/exact/linf@0.05": 0.6,
        "certified/exact/linf/upper@0.05": 0.7, "certified/exact/linf/undecided@0.05": 10}
