"""Evaluation protocols: which samples are scored, the evaluation units and their fusion, metrics.

A protocol is a frozen spec (``protocols.spec.ProtocolSpec``) in its own module, as ``SPEC``;
one evaluator (``protocols.fusion.FusionEvaluator``) scores them all.  ``get(name)`` returns a
spec and ``available()`` lists the names.  Adding a protocol is one module with its ``SPEC``
and one line in :data:`PROTOCOL_MODULES`.  ``protocols.evaluate.evaluate`` scores a
predictions file under a protocol.
"""

from __future__ import annotations

import importlib

from protocols.fusion import FusionEvaluator
from protocols.spec import Level, ProtocolSpec, Requirements

PROTOCOL_MODULES: dict[str, str] = {
    "invariant": "protocols.invariant",
    "synergy": "protocols.synergy",
    "standard": "protocols.standard",
    "realiad-sample": "protocols.realiad_sample",
    "real3d-ad": "protocols.real3d_ad",
    "mvtec-3d": "protocols.mvtec_3d",
    "eyecandies": "protocols.eyecandies",
}
"""Registry name -> module holding its ``SPEC``."""


def available() -> list[str]:
    """Names of the registered protocols."""
    return sorted(PROTOCOL_MODULES)


def get(name: str) -> ProtocolSpec:
    """The protocol called ``name`` (see :func:`available`)."""
    if name not in PROTOCOL_MODULES:
        raise ValueError(f"unknown protocol {name!r}; available: {', '.join(available())}")
    spec = importlib.import_module(PROTOCOL_MODULES[name]).SPEC
    if spec.name != name:
        raise ValueError(f"{PROTOCOL_MODULES[name]}.SPEC is named {spec.name!r}, not {name!r}")
    return spec


__all__ = ["FusionEvaluator", "Level", "PROTOCOL_MODULES", "ProtocolSpec", "Requirements", "available", "get"]
