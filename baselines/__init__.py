"""Anomaly-detection methods behind one interface (``baselines.base.Method``) and a registry.

Adding a method is adding a module with a ``Method`` class and a ``Config`` dataclass, and one
line in ``_REGISTRY``.  Entries are import paths, so heavy methods load only when asked for.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from typing import Any

from baselines.base import Batch, Method

_REGISTRY: dict[str, str] = {
    # name: "module:Class"
    "btf": "baselines.btf:BTF",
    "btf-rgb": "baselines.btf:BTFRGB",
    "cdo": "baselines.cdo:CDO",
    "dinomaly": "baselines.dinomaly:Dinomaly",
    "gaussian": "baselines.gaussian:GaussianMethod",
    "grnr": "baselines.grnr:GRNR",
    "inpformer": "baselines.inpformer:INPFormer",
    "inpformer-pp": "baselines.inpformer_pp:INPFormerPP",
    "msflow": "baselines.msflow:MSFlow",
    "patchcore": "baselines.patchcore:PatchCore",
    "pnpt": "baselines.pnpt:PNPT",
    "random": "baselines.random:RandomMethod",
    "rdpp": "baselines.rdpp:RDPP",
    "varad": "baselines.varad:VarAD",
}


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type:
    """The class registered under ``name``."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def config_class(name: str) -> type:
    """The config dataclass of the method ``name``."""
    return method_class(name).Config


def parse_method_args(name: str, pairs: list[str]) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` from the CLI into typed config kwargs for method ``name``."""
    config = config_class(name)
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--method-arg expects key=value, got {pair!r}")
        if key not in fields:
            raise ValueError(f"method {name!r} has no option {key!r}; options: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(raw.strip(), hints[key], key)
    return kwargs


def _coerce(raw: str, hint: Any, key: str) -> Any:
    """Read the CLI string ``raw`` as a value of the type ``hint`` of option ``key``."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        if raw.lower() in ("none", "null", ""):
            return None
        hint, origin = args[0], typing.get_origin(args[0])
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint in (int, float, str):
            return hint(raw)
        if origin in (list, tuple):
            (item,) = typing.get_args(hint)[:1] or (str,)
            items = [_coerce(part.strip(), item, key) for part in raw.split(",") if part.strip()]
            return tuple(items) if origin is tuple else items
        if origin is typing.Literal:
            if raw not in typing.get_args(hint):
                raise ValueError(raw)
            return raw
    except ValueError:
        raise ValueError(f"option {key!r}: cannot read {raw!r} as {hint}") from None
    return raw


def create(name: str, **kwargs: Any) -> Method:
    """Build the method ``name`` with config fields given as keyword arguments."""
    cls = method_class(name)
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"method {name!r} has no option {', '.join(map(repr, unknown))}; options: {', '.join(sorted(known))}")
    return cls(cls.Config(**kwargs))


__all__ = ["Batch", "Method", "available", "config_class", "create", "method_class", "parse_method_args"]
