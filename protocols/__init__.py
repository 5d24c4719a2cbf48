"""Evaluation protocols: which samples train and test, evaluation units, fusion, metrics.

``get(name)`` returns a protocol object (``protocols.base.Protocol``) and ``available()`` lists
the names.  Adding a protocol is adding one module with a ``Protocol`` subclass and one line in
``_REGISTRY``.  ``protocols.evaluate.evaluate`` scores a predictions file under a protocol.
"""

from __future__ import annotations

from protocols.base import Evaluator, ImageEvaluator, Protocol
from protocols.invariant import Invariant
from protocols.standard import Standard
from protocols.synergy import Synergy, SynergyEvaluator

_REGISTRY: dict[str, type[Protocol]] = {
    protocol.name: protocol for protocol in (Invariant, Synergy, Standard)
}


def available() -> list[str]:
    """Names of the registered protocols."""
    return sorted(_REGISTRY)


def get(name: str) -> Protocol:
    """The protocol called ``name`` (``invariant``, ``synergy`` or ``standard``)."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; available: {', '.join(available())}") from None


__all__ = ["Evaluator", "ImageEvaluator", "Protocol", "SynergyEvaluator", "available", "get"]
