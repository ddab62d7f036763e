"""A value of the wrong type fails before any work, naming its key, its value and the expected type."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mdrec.train.run import train
from mdrec.train.typecheck import check_types
from tests.helpers import CONF_DIR, TrainCfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("backbone.dropout=high", r"backbone.dropout='high' is not a float \(argument 'dropout' of .*DNNBackbone\)"),
        ("backbone.layer_sizes=64", r"backbone.layer_sizes=64 is not of type Sequence\[int\]"),
        ("input.embedding_dim=1.5", r"input.embedding_dim=1.5 is not an int"),
        ("trainer.max_epochs=abc", r"trainer.max_epochs='abc' is not of type Optional\[int\]"),
        ("model.domain_weights={d3: high}", r"model.domain_weights=\{'d3': 'high'\} is not of type dict\[str, float\]"),
    ],
)
def test_a_wrong_type_fails_before_data_preparation(
    train_cfg: TrainCfg, tmp_path: Path, override: str, message: str
) -> None:
    (tmp_path / "data").mkdir(exist_ok=True)
    with pytest.raises(TypeError, match=message):
        train(train_cfg([override]))
    assert not any((tmp_path / "data").iterdir())  # nothing prepared


def test_adapter_and_stage_arguments_are_checked(train_cfg: TrainCfg) -> None:
    with pytest.raises(TypeError, match=r"adapter.rank=\[1\] is not an int \(argument 'rank' of .*LoRA\)"):
        check_types(train_cfg(["stage=adapt", "adapter=lora", "adapter.rank=[1]"]))
    with pytest.raises(TypeError, match=r"stage.patience='x' is not of type int \| None"):
        check_types(train_cfg(["stage=adapt", "stage.patience=x"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["stage=adapt", "adapter=iak", "adapter.placement=all"],
            "adapter.placement='all' is not one of 'head', 'layers'",
        ),
        (["model.loss_normalization=row"], "model.loss_normalization='row' is not one of 'batch', 'domain'"),
        (["backbone=dcnv2", "backbone.structure=1"], "backbone.structure=1 is not one of 'stacked', 'parallel'"),
        (["stage=onboard", "stage.adapted=run", "stage.init=best"], "stage.init='best' is not one of 'identity'"),
    ],
)
def test_a_choice_outside_its_literal_fails_naming_the_choices(
    train_cfg: TrainCfg, overrides: list[str], message: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        check_types(train_cfg(overrides))


GROUPS = ["data", "model", "backbone", "adapter", "trainer", "callbacks", "logger", "experiment", "debug", "stage"]


OPTIONS = [f"{group}={path.stem}" for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]


@pytest.mark.parametrize("option", [o for o in OPTIONS if o != "callbacks=none"])  # the harness drops a callback
def test_every_shipped_option_passes(train_cfg: TrainCfg, option: str) -> None:
    extra = ["stage.adapted=run"] if option == "stage=onboard" else []
    check_types(train_cfg([option, *extra]))
