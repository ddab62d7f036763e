"""What the command lines print: the third-party chatter left out, tables aligned, the config tree."""

from __future__ import annotations

import logging
import warnings

import pytest
from omegaconf import OmegaConf

from mdrec.console import config_tree, quiet_third_party, render
from mdrec.eval.report import domain_table


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_known_chatter_is_left_out_and_nothing_else() -> None:
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter per logger and pattern
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert len(logger.filters) == len({f.pattern.pattern for f in logger.filters})
    recorder, level = Recorder(), logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    try:
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        logger.info("TPU available: False, using: 0 TPU cores")
        logger.info("GPU available: False, used: False")
        logger.info("GPU available: True (cuda), used: True")  # says something: kept
        logger.info("Running in `fast_dev_run` mode: will run the requested loop using 1 batch(es).")
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
    assert recorder.messages == [
        "GPU available: True (cuda), used: True",
        "Running in `fast_dev_run` mode: will run the requested loop using 1 batch(es).",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
        warnings.warn(leaf, FutureWarning, stacklevel=1)
        warnings.warn("Found 15 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
        warnings.warn("`foo` is deprecated", FutureWarning, stacklevel=1)  # another one: shown
        warnings.warn(leaf, UserWarning, stacklevel=1)  # the same text in another category: shown
    assert [(w.category, str(w.message)[:5]) for w in caught] == [(FutureWarning, "`foo`"), (UserWarning, "`isin")]


@pytest.mark.parametrize("long_name", ["a" * 30, "d"])
def test_the_domain_table_is_aligned_whatever_the_names(long_name: str) -> None:
    domains = [long_name, "b"]
    metrics = {"test/auc": 0.75, "test/logloss": 0.5, "oracle/auc": 0.9}
    for i, d in enumerate(domains):
        metrics |= {f"test/auc/{d}": 0.7 + 0.1 * i, f"test/logloss/{d}": 0.5, f"test/rows/{d}": 10 ** (i + 1)}
        metrics |= {f"oracle/auc/{d}": 0.9}
    lines = domain_table(metrics, domains).splitlines()
    assert [line.split()[0] for line in lines[2:4]] == domains and lines[5].split() == [
        "overall", "110", "0.7500", "0.5000", "0.9000", "0.1500"
    ]  # fmt: skip
    assert len({len(line) for line in lines}) == 1  # every line as wide as the table: the columns line up
    cells = zip([lines[0], *lines[2:4]], ["AUC", "0.7000", "0.8000"], strict=True)
    ends = {line.index(word) + len(word) for line, word in cells}
    assert len(ends) == 1  # the test AUC column is right-aligned under its title


def test_the_domain_table_shows_the_baseline_and_how_far_this_run_is_ahead() -> None:
    metrics = {"test/auc": 0.75, "test/logloss": 0.5, "baseline/test/auc": 0.78}
    for d, auc, ref in (("a", 0.7, 0.65), ("b", 0.8, 0.81)):
        metrics |= {
            f"test/auc/{d}": auc,
            f"test/logloss/{d}": 0.5,
            f"test/rows/{d}": 10,
            f"baseline/test/auc/{d}": ref,
        }
    lines = domain_table(metrics, ["a", "b"], baseline="PLE").splitlines()
    assert lines[0].split()[-3:] == ["PLE", "AUC", "ahead"]
    assert [line.split()[-2:] for line in (lines[2], lines[3], lines[5])] == [
        ["0.6500", "+0.0500"], ["0.8100", "-0.0100"], ["0.7800", "-0.0300"]
    ]  # fmt: skip


def test_the_config_tree_shows_every_node_resolved() -> None:
    cfg = OmegaConf.create({"seed": 3, "tags": ["a"], "size": 256, "net": {"layer_sizes": ["${size}", 128], "x": None}})
    text = render(config_tree(cfg))
    assert "seed: 3" in text and 'tags: ["a"]' in text
    assert "layer_sizes: [256, 128]" in text and "x: null" in text  # resolved; plain lists on one line
