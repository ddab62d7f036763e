"""A composed config checked against the type annotations of the constructors it names, before any work starts.

Hydra passes a value to its constructor as it is: ``backbone.dropout=high`` would fail only when the network is
built, after data preparation, with a ``TypeError`` that names no key. :func:`check_types` visits every node with a
``_target_`` and compares each given argument with the annotation of that parameter. Plain annotations are checked
(``int``, ``float``, ``bool``, ``str``, ``None``, ``Literal[...]`` choices, their unions, ``Sequence[...]``/
``list[...]``/``tuple[...]`` of them, ``dict``); anything else (callables, classes, ``Any``) is left to the
constructor.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

SIMPLE = (int, float, bool, str, type(None))
SEQUENCES = (collections.abc.Sequence, list, tuple)


def check_types(cfg: DictConfig) -> None:
    """Raise a ``TypeError`` naming the key, the value and the expected type for the first argument of a
    ``_target_`` node in ``cfg`` whose value does not fit its annotation."""
    _visit(cfg, "")


def _visit(node: Any, key: str) -> None:
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            _visit(node._get_node(i), f"{key}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    hints = _hints(node)
    for name in node:
        child = node._get_node(name)
        path = f"{key}.{name}" if key else str(name)
        if hints is not None and not str(name).startswith("_") and name in hints:
            try:
                value = OmegaConf.to_container(child, resolve=True) if OmegaConf.is_config(child) else node[name]
            except Exception:  # resolved only inside a Hydra job (paths, run directories): left to the run
                continue
            if not _fits(value, hints[name]):
                raise TypeError(
                    f"{path}={value!r} is not {_describe(hints[name])} (argument {name!r} of {node['_target_']}); "
                    f"set {path} to a value of that type"
                )
        _visit(child, path)


def _hints(node: DictConfig) -> dict[str, Any] | None:
    """The parameter annotations of the node's target (None: no target, or one that cannot be read)."""
    target = node.get("_target_") if "_target_" in node else None
    if not isinstance(target, str):
        return None
    try:
        obj = get_object(target)
        return typing.get_type_hints(obj.__init__ if isinstance(obj, type) else obj)
    except Exception:  # an annotation that names what its module does not import at run time: not checked
        return None


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (plain Python) fits ``hint``; True for any hint this module does not check."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return True
    if origin is typing.Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint in SIMPLE:
        if hint is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, hint)
    if hint in SEQUENCES or origin in SEQUENCES:
        if not isinstance(value, list | tuple):
            return False
        args = typing.get_args(hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            args = args[:1]
        elif origin is tuple and args:
            return len(args) == len(value) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_fits(v, args[0]) for v in value)
    if hint in (dict, collections.abc.Mapping) or origin in (dict, collections.abc.Mapping):
        args = typing.get_args(hint)
        if not isinstance(value, dict):
            return False
        return not args or all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    return True


def _describe(hint: Any) -> str:
    """``hint`` as a person reads it: ``a float``, ``Sequence[int]``, ``int | None``."""
    if hint in SIMPLE:
        return "None" if hint is type(None) else ("an int" if hint is int else f"a {hint.__name__}")
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    return "of type " + str(hint).replace("typing.", "").replace("collections.abc.", "")
