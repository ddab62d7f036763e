"""A run directory: the one place that knows its file names and how each file is written and read back.

A run writes ``config.yaml`` (the resolved config), ``provenance.json``, ``metrics.json``, ``predictions.npz`` (when
tested), ``data_report.json`` and, by stage, ``backbone.pt`` + ``backbone.yaml`` (the backbone and the config that
rebuilds it) and ``adapter.pt``, ``encoding.json`` and ``drift_reference.npz`` (adapt and onboard runs); a failed run
leaves ``failure.json``; Lightning writes ``checkpoints/``; the serving tools add ``serving.pt``. Loading is strict:
a mismatch names the missing and unexpected keys and the shapes.

Every binary file mdrec writes for later loading (checkpoints, ``backbone.pt``, ``adapter.pt``, ``serving.pt``,
``predictions.npz``) is written by :func:`save_checked`: atomically, with its sha256 beside it (``<file>.sha256``,
the format of ``sha256sum``), and read back by :func:`load_checked`, which compares the two first: a corrupted file
is refused, naming it, before anything unpickles or unzips it.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import re
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mdrec.adapters.base import AdaptedNet, Adapter, AdapterFactory
from mdrec.data.files import remove_stale_temporaries, temporary_path
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone

# what a config read back from a file may instantiate: mdrec's own classes and the optimisers configs name
SAFE_TARGETS = frozenset(f"torch.optim.{name}" for name in ("Adam", "AdamW", "SGD", "Adagrad", "RMSprop"))
# modules whose classes a user trusts besides mdrec's (their own backbones, adapters, data sources), comma-separated
TRUSTED_MODULES_ENV = "MDREC_TRUSTED_MODULES"


def is_safe_target(target: object) -> bool:
    """Whether a config read from a file may instantiate ``target``: one of ``SAFE_TARGETS``, or exactly
    ``<module>.<Class>`` for a class defined in that module, the module being mdrec's or one named in
    ``$MDREC_TRUSTED_MODULES``. Attribute paths through a module (``mdrec.rundir.torch.load``) and functions are
    refused."""
    if not isinstance(target, str):
        return False
    if target in SAFE_TARGETS:
        return True
    module_name, _, name = target.rpartition(".")
    trusted = ["mdrec", *(m.strip() for m in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if m.strip())]
    if not any(module_name == m or module_name.startswith(f"{m}.") for m in trusted):
        return False
    try:
        obj = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        return False
    return isinstance(obj, type) and obj.__module__ == module_name and obj.__qualname__ == name


def check_targets(value: Any, source: Path, key: str) -> None:
    """Refuse a config value (resolved, plain containers) that names a ``_target_`` which is not safe
    (:func:`is_safe_target`), at any nesting level: instantiating it could run any code. The error names the file,
    the key and the target."""
    if isinstance(value, dict):
        target = value.get("_target_")
        if target is not None and not is_safe_target(target):
            where = f"{key}._target_" if key else "_target_"
            raise ValueError(
                f"{source}: {where} is {target!r}, which mdrec does not instantiate from a file: only classes of "
                f"mdrec's modules (named as <module>.<Class>) and {sorted(SAFE_TARGETS)}. If the file names a class "
                f"of your own that you trust, add its module to ${TRUSTED_MODULES_ENV} (comma-separated); otherwise "
                "the file was edited or not written by mdrec: delete it, or rebuild the run from a config you trust"
            )
        for k, v in value.items():
            check_targets(v, source, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_targets(v, source, f"{key}[{i}]")


def safe_instantiate(node: DictConfig, source: Path, key: str, partial: bool = False) -> Any:
    """``hydra.utils.instantiate`` of a config node read from ``source``, its targets checked first (resolved, at
    every level: :func:`check_targets`)."""
    value = OmegaConf.to_container(node, resolve=True)
    check_targets(value, source, key)
    return hydra.utils.instantiate(OmegaConf.create(value), _partial_=partial)


# --- files that carry their checksum ----------------------------------------------------------------------------------
CHECKSUM_SUFFIX = ".sha256"
T = TypeVar("T")


class UncheckedFileWarning(UserWarning):
    """A file loaded without a recorded checksum (written by an mdrec older than checksums, or copied without it)."""


def checksum_file(path: Path) -> Path:
    """Where the checksum of ``path`` is recorded: ``<path>.sha256``."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256(path: Path) -> str:
    """The hex sha256 of the file ``path``, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temporary(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """A hidden temporary file beside ``path`` (:func:`~mdrec.data.files.temporary_path`: not ``*.ckpt``, so
    Lightning's search for ``last*.ckpt`` never sees it) holding what ``write`` writes into it, flushed and fsynced
    (removed if writing fails; a full disk is an ``OSError`` naming ``path``)."""
    tmp = temporary_path(path)
    try:
        with tmp.open("xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if disk_full(error):  # torch's writer reports it as "unexpected pos": say what happened
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device while writing {path}: the previous file is intact; free space, then "
                "run again (a training run resumes with its command plus hydra.run.dir=<run dir> ckpt_path=last)",
            ) from error
        raise
    return tmp


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` or an error it was raised from is "no space left on device"."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def save_checked(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write the file ``path`` as ``write(file)`` writes it, and its sha256 beside it (:func:`checksum_file`).

    Both are written to temporary files beside their targets (fsynced) and renamed onto them (``os.replace``); the
    old checksum is removed just before the renames. A crash at any point leaves the previous file with its
    checksum, or one of the two files without a checksum (which :func:`load_checked` loads with a warning), never
    a file with a checksum that does not match it. The folder is made if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)  # what a killed writer left
    record = checksum_file(path)
    tmp = _temporary(path, write)
    try:
        line = f"{sha256(tmp)}  {path.name}\n".encode()
        tmp_record = _temporary(record, lambda f: f.write(line))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    record.unlink(missing_ok=True)
    os.replace(tmp, path)
    os.replace(tmp_record, record)
    directory = os.open(path.parent, os.O_RDONLY)  # make the renames themselves durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def verify_checksum(path: Path, remedy: str) -> None:
    """Compare the file ``path`` with the sha256 recorded beside it (:func:`save_checked`); without a record (a
    file written by an mdrec older than checksums, or copied without it) warn and go on.

    Raises:
        ValueError: the record is not a sha256, or the file's sha256 differs from it; the error names the file and
            ends with ``remedy`` (what to do).
    """
    path = path.resolve()  # a link (Lightning's save_last=link) is checked against its target's record
    record = checksum_file(path)
    if not record.exists():
        warnings.warn(
            f"{path} has no checksum ({record.name}): written by an mdrec older than checksums, or copied without "
            "it; loaded without an integrity check (save it again to add one)",
            UncheckedFileWarning,
            stacklevel=3,
        )
        return
    text = record.read_text(errors="replace")
    expected = text.split()[0] if text.split() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ValueError(
            f"{record} does not hold a sha256 (it reads {text[:80]!r}): it was damaged or edited. {remedy}"
        )
    actual = sha256(path)
    if actual != expected:
        raise ValueError(
            f"{path} is corrupted: its sha256 is {actual} ({path.stat().st_size} bytes), not the {expected} recorded "
            f"in {record.name} when it was written; it was cut short, damaged (disk, copy, transfer) or edited. "
            f"{remedy}"
        )


def load_checked(path: str | Path, load: Callable[[Path], T], form: str, remedy: str) -> T:
    """``load(path)`` of a file written by :func:`save_checked`, its checksum verified first
    (:func:`verify_checksum`: a file without one loads with a warning).

    Args:
        path: the file.
        load: reads it, e.g. ``torch.load`` with ``weights_only=True``.
        form: what it holds, for the error (``"plain tensors and values"``).
        remedy: what to do about a corrupted file, for the errors (delete it and re-run ...).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the checksum does not match, or the file does not load (truncated, garbage, crafted, from
            another program): the error names the file, the cause and ``remedy``; never a bare ``EOFError`` or
            ``failed finding central directory``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    verify_checksum(path, remedy)
    try:
        return load(path)
    except PermissionError:
        raise
    except Exception as error:  # bytes that are not what was written raise anything: EOFError, OSError, KeyError, ...
        first = (str(error).split(". ")[0].strip().splitlines() or [""])[0][:200]  # torch's messages run long
        raise ValueError(
            f"{path} does not load as {form} ({type(error).__name__}: {first}): it is truncated or corrupted, or it "
            f"is not a file mdrec wrote (mdrec never unpickles objects from a file). {remedy}"
        ) from None


def load_weights(path: str | Path, remedy: str) -> Any:
    """The tensors and plain values of a ``torch.save`` file written by :func:`save_checked`, read with
    ``torch.load(weights_only=True)`` on the CPU (:func:`load_checked`: checked, errors name the file)."""
    return load_checked(
        path, lambda p: torch.load(p, map_location="cpu", weights_only=True), "plain tensors and values", remedy
    )


@dataclass(frozen=True)
class RunDir:
    """The files of one run, under ``path``."""

    path: Path

    CONFIG = "config.yaml"
    PROVENANCE = "provenance.json"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.npz"
    DATA_REPORT = "data_report.json"
    FAILURE = "failure.json"
    BACKBONE = "backbone.pt"
    BACKBONE_CONFIG = "backbone.yaml"
    ADAPTER = "adapter.pt"
    NETWORK = "network.pt"  # a stage=specialise run's network (its config: config.yaml's model.net)
    ENCODING = "encoding.json"
    DRIFT_REFERENCE = "drift_reference.npz"
    SERVING = "serving.pt"
    CHECKPOINTS = "checkpoints"
    BASELINE = "baseline"  # a baseline= run's end-to-end model: a run directory of its own inside this one

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def file(self, name: str) -> Path:
        """``path / name``."""
        return self.path / name

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    # --- the config, metrics and other JSON records -------------------------------------------------------------
    def write_config(self, cfg: DictConfig) -> None:
        """``config.yaml``: ``cfg`` resolved (the directory is made if missing)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(self.CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def read_config(self) -> DictConfig:
        """``config.yaml`` as written by :meth:`write_config`."""
        return self._load_yaml(self.CONFIG)

    def write_json(self, name: str, value: Mapping[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(name).write_text(json.dumps(value, indent=2, sort_keys=name == self.METRICS))

    def read_json(self, name: str) -> dict[str, Any]:
        """The mapping JSON file ``name`` holds.

        Raises:
            ValueError: the file is not JSON, or not a mapping; the error names it.
        """
        path = self.file(name)
        try:
            value = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"{path} is not valid JSON ({error}): it was cut short or edited; re-run the job that wrote it, or "
                "move its run directory out of the way"
            ) from None
        if not isinstance(value, dict):
            raise ValueError(
                f"{path} holds a JSON {type(value).__name__}, not a mapping of names to values: it was edited or "
                "written by another program; re-run the job that wrote it, or move its run directory out of the way"
            )
        return value

    def write_metrics(self, metrics: Mapping[str, float]) -> None:
        """``metrics.json``; a run that finishes is no longer a failure (``failure.json`` goes)."""
        self.write_json(self.METRICS, metrics)
        self.file(self.FAILURE).unlink(missing_ok=True)

    def read_metrics(self) -> dict[str, float]:
        """``metrics.json``: metric names to numbers (NaN included).

        Raises:
            ValueError: the file is not a JSON mapping, or a value is not a number; the error names the file, the
                key and the value.
        """
        metrics = self.read_json(self.METRICS)
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(
                    f"{self.file(self.METRICS)}: {key!r} is {value!r}, not a number (mdrec writes numbers only): the "
                    "file was edited or written by another program; fix the value, or re-run the job"
                )
        return metrics

    def write_failure(self, error: BaseException) -> None:
        """``failure.json``: the error, its traceback and the time."""
        record = {
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error)),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.write_json(self.FAILURE, record)

    # --- predictions ------------------------------------------------------------------------------------------------
    def write_predictions(self, predictions: Mapping[str, np.ndarray]) -> None:
        """``predictions.npz``: ``prob [n, T]``, ``label [n, T_all]``, ``domain [n]`` of the test rows, ``domains``
        (names in id order) and optionally ``zeroshot_prob [n, T]``."""
        save_checked(self.file(self.PREDICTIONS), lambda f: np.savez_compressed(f, **predictions))

    def read_predictions(self) -> dict[str, np.ndarray]:
        """``predictions.npz`` (arrays only: no pickled objects are loaded), checked against its checksum."""
        path = self.file(self.PREDICTIONS)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the run was not tested (test=false) or did not finish")
        remedy = f"Delete it and re-run the job that wrote {self.path} (its test writes it)"
        return load_checked(path, _read_arrays, "numpy arrays", remedy)

    # --- how the run's data was encoded -------------------------------------------------------------------------
    def write_encoding(self, encoding: Mapping[str, Any]) -> None:
        """``encoding.json``: how the run's data was encoded (``mdrec.data.alignment.Encoding``), with its checksum
        (:func:`save_checked`)."""
        text = json.dumps(encoding).encode()
        save_checked(self.file(self.ENCODING), lambda f: f.write(text))

    def read_encoding(self) -> dict[str, Any]:
        """``encoding.json`` as a JSON mapping, checked against its checksum (its content is checked by
        ``mdrec.data.alignment.Encoding.from_json``)."""
        path = self.file(self.ENCODING)
        if not path.exists() and self.exists(self.NETWORK):
            raise FileNotFoundError(
                f"{self.path} is a stage=specialise run: it records no encoding.json, which onboarding and "
                "data=aligned read from a stage=adapt (or onboard) run, whose adapter grows by one slice per new "
                "domain. Point at an adapt run"
            )
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: {self.path} is not the directory of a finished stage=adapt (or onboard) run, or "
                "it was made by an mdrec older than encoding.json; re-run the adapt job"
            )
        remedy = f"Delete it and re-run the job that wrote {self.path}, or copy the run directory again"
        if not checksum_file(path).exists():  # every encoding.json was written with one: none is no older mdrec's
            raise ValueError(f"{path} has no checksum ({checksum_file(path).name}) beside it. {remedy}")
        value = load_checked(path, lambda p: json.loads(p.read_text()), "a JSON mapping", remedy)
        if not isinstance(value, dict):
            raise ValueError(f"{path} holds a JSON {type(value).__name__}, not a mapping. {remedy}")
        return value

    # --- the reference of drift checks ---------------------------------------------------------------------------
    def write_drift_reference(self, arrays: Mapping[str, np.ndarray]) -> None:
        """``drift_reference.npz``: per domain, the training rows' histograms and the test predictions a drift check
        compares fresh data with (``mdrec.eval.drift.reference_arrays``), with its checksum."""
        save_checked(self.file(self.DRIFT_REFERENCE), lambda f: np.savez_compressed(f, **arrays))

    def read_drift_reference(self) -> dict[str, np.ndarray]:
        """``drift_reference.npz`` (arrays only), checked against its checksum (its content is checked by
        ``mdrec.eval.drift.reference_of``)."""
        path = self.file(self.DRIFT_REFERENCE)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: {self.path} holds no reference for a drift check (the training rows' "
                "histograms and test predictions that stage=adapt and stage=onboard runs write since mdrec writes "
                "them). Re-run the adapt (or onboard) job that made it, or write the reference from the run's own "
                "data: python -m mdrec.train.drift <run dir> --write-reference"
            )
        remedy = f"Delete it and re-run the job that wrote {self.path} (or write it again with --write-reference)"
        return load_checked(path, _read_arrays, "numpy arrays", remedy)

    # --- backbone and adapter ---------------------------------------------------------------------------------------
    def save_backbone(self, backbone: nn.Module, backbone_cfg: DictConfig) -> None:
        """``backbone.pt`` (the state dict, with its checksum: :func:`save_checked`) and ``backbone.yaml`` (the config
        node that rebuilds it)."""
        state = backbone.state_dict()
        save_checked(self.file(self.BACKBONE), lambda f: torch.save(state, f))
        self.file(self.BACKBONE_CONFIG).write_text(OmegaConf.to_yaml(backbone_cfg, resolve=True))

    def has_backbone(self) -> bool:
        return self.exists(self.BACKBONE) and self.exists(self.BACKBONE_CONFIG)

    def backbone_config(self) -> DictConfig:
        """``backbone.yaml``."""
        if not self.has_backbone():
            raise FileNotFoundError(
                f"{self.path} holds no pre-trained backbone ({self.BACKBONE} and {self.BACKBONE_CONFIG}); point "
                "stage.pretrained at a run made with stage=pretrain, or leave it null to pre-train one"
            )
        return self._load_yaml(self.BACKBONE_CONFIG)

    def load_backbone(self, schema: Schema) -> Backbone:
        """The backbone of ``backbone.pt`` + ``backbone.yaml``, rebuilt for ``schema`` and loaded strictly."""
        config = self.file(self.BACKBONE_CONFIG)
        backbone = safe_instantiate(self.backbone_config(), config, "", partial=True)(schema)
        load_state_strict(backbone, self._load_tensors(self.BACKBONE), str(self.file(self.BACKBONE)))
        return backbone

    def save_adapter(self, adapter: Adapter) -> None:
        """``adapter.pt``: the adapter's state dict (with its checksum: :func:`save_checked`)."""
        state = adapter.state_dict()
        save_checked(self.file(self.ADAPTER), lambda f: torch.save(state, f))

    def instantiate(self, key: str) -> Any:
        """The object of ``config.yaml``'s node ``key`` (e.g. ``data``), its targets checked first."""
        return safe_instantiate(self.read_config()[key], self.file(self.CONFIG), key)

    def adapter_config(self) -> DictConfig | None:
        """The ``adapter`` node of ``config.yaml`` (None: the run had no adapter)."""
        return self.read_config().get("adapter")

    def adapter_factory(self) -> AdapterFactory:
        """The adapter class of ``config.yaml``'s ``adapter`` node with its options bound: ``factory(schema,
        backbone)``."""
        adapter_cfg = self.adapter_config()
        if adapter_cfg is None:
            raise FileNotFoundError(f"{self.file(self.CONFIG)} has no adapter: point at a run made with stage=adapt")
        return safe_instantiate(adapter_cfg, self.file(self.CONFIG), "adapter", partial=True)

    def load_adapted(self, schema: Schema) -> AdaptedNet:
        """The adapted network of an adapt (or onboard) run, rebuilt for ``schema``, loaded strictly, its backbone
        frozen."""
        backbone = self.load_backbone(schema)
        if self.adapter_config() is None or not self.exists(self.ADAPTER):
            raise FileNotFoundError(
                f"{self.path} holds no adapter ({self.ADAPTER}): point at a run made with stage=adapt"
            )
        adapter = self.adapter_factory()(schema, backbone)
        load_state_strict(adapter, self._load_tensors(self.ADAPTER), str(self.file(self.ADAPTER)))
        return AdaptedNet(schema, backbone, adapter, freeze=["*"])

    def save_network(self, net: nn.Module) -> None:
        """``network.pt``: the state dict of the network ``config.yaml``'s ``model.net`` builds (with its checksum:
        :func:`save_checked`)."""
        state = net.state_dict()
        save_checked(self.file(self.NETWORK), lambda f: torch.save(state, f))

    def build_network(self, schema: Schema) -> nn.Module:
        """The network ``config.yaml``'s ``model.net`` builds for ``schema``, untrained (its targets checked)."""
        return safe_instantiate(self.read_config().model.net, self.file(self.CONFIG), "model.net", partial=True)(schema)

    def load_network(self, schema: Schema) -> nn.Module:
        """The network of ``network.pt``: :meth:`build_network`, loaded strictly."""
        net = self.build_network(schema)
        load_state_strict(net, self._load_tensors(self.NETWORK), str(self.file(self.NETWORK)))
        return net

    # --- reading ----------------------------------------------------------------------------------------------------
    def _load_yaml(self, name: str) -> DictConfig:
        path = self.file(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: give the directory of a finished mdrec run")
        value = OmegaConf.load(path)
        if not isinstance(value, DictConfig):
            raise ValueError(f"{path} holds a {type(value).__name__}, not a mapping of config keys")
        return value

    def _load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The state dict in file ``name``, checked against its checksum (:func:`load_weights`)."""
        remedy = (
            f"Delete it and re-run the job that wrote {self.path} (a backbone store entry, pretrained/<key>/, is "
            "pre-trained again once deleted), or copy the run directory again from its source"
        )
        return load_weights(self.file(name), remedy)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (``allow_pickle=False``: no pickled objects)."""
    with np.load(path, allow_pickle=False) as data:
        return dict(data)


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; on any mismatch raise listing missing and unexpected keys and shape changes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    common = set(own) & set(state)
    shapes = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in common if state[k].shape != own[k].shape}
    if missing or unexpected or shapes:
        raise ValueError(
            f"the weights in {source} do not fit the {type(module).__name__} this config builds: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape differences (saved, built) "
            f"{dict(sorted(shapes.items()))}. Build it with the config and data the file was made with (the run's "
            "backbone.yaml / config.yaml), or point at the right run"
        )
    module.load_state_dict(state)
