"""`m2ad list datasets|methods|protocols|weights [--json]`: what each registry holds.

Every listing iterates its registry (``m2ad.datasets.registry``, ``baselines``, ``protocols``,
``baselines.weights.REGISTRY``), so a new entry appears here with no change to this file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from m2ad.cli._common import console, fail


def datasets() -> list[dict[str, Any]]:
    """One record per registered dataset spec."""
    from m2ad.datasets import registry

    records = []
    for name in registry.available():
        spec = registry.get(name)
        records.append({"name": name, "title": spec.display_name, "license": spec.license_id, "protocols": list(spec.protocols),
                        "axes": list(spec.axes), "modalities": list(spec.modalities), "categories": len(spec.categories) or "any",
                        "synthetic twin": f"{name}{registry.SYNTHETIC_SUFFIX}"})
    return records


def methods() -> list[dict[str, Any]]:
    """One record per registered method, from its card."""
    import baselines

    records = []
    for name in baselines.available():
        card = baselines.method_class(name).card
        records.append({"name": name, "settings": list(card.settings), "needs fit": card.needs_fit, "inputs": list(card.inputs),
                        "input unit": card.input_unit, "weights": list(card.weights)})
    return records


def protocols() -> list[dict[str, Any]]:
    """One record per registered protocol."""
    import protocols as registry

    records = []
    for name in registry.available():
        protocol = registry.get(name)
        records.append({"name": name, "version": str(getattr(protocol, "version", "1")), "metrics": list(protocol.metric_names)})
    return records


def weights() -> list[dict[str, Any]]:
    """One record per known weights file, with where it is cached (null: not yet)."""
    from baselines import weights as registry

    records = []
    for name, entry in registry.REGISTRY.items():
        cached = registry.cached_path(name)
        records.append({"name": name, "license": entry.license, "size": entry.size, "verified by": entry.verification,
                        "cached": str(cached.resolve()) if cached else None})
    return records


KINDS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "datasets": datasets, "methods": methods, "protocols": protocols, "weights": weights,
}


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def list_registry(
    kind: Annotated[str, typer.Argument(help=f"What to list: {', '.join(KINDS)}.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list of records) instead of a table.")] = False,
) -> None:
    """List the registered datasets, methods, protocols or weights."""
    if kind not in KINDS:
        fail(f"m2ad list takes one of {', '.join(KINDS)}, not {kind!r}", code=2)
    records = KINDS[kind]()
    if as_json:
        typer.echo(json.dumps(records, indent=2))
    else:
        print_table(records, kind)


def print_table(records: list[dict[str, Any]], title: str) -> None:
    """Records as a table, one column per key (lists comma-separated, booleans yes/no)."""
    table = Table(title=title)
    for column in records[0] if records else ["name"]:
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(*(_text(value) for value in record.values()))
    console.print(table)
