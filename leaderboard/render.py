"""The static leaderboard site: ``index.html``, ``leaderboard.md`` and matplotlib figures.

The page is self-contained (inline CSS and a few lines of inline JavaScript, no CDN), so it
works offline and from ``file://``.  Every string that came from a user (method, variant,
submitter, citation, note, ...) has its control characters escaped (:func:`m2ad.text.printable`:
no terminal escape or bidirectional override survives), then goes through :func:`html.escape`
in the page, :func:`leaderboard.aggregate.escape_markdown` in the markdown copy and
:func:`_plain` in figure labels (matplotlib would otherwise read ``$...$`` as math).  Figure file names are
numbered, never derived from user strings.

Layout: every table sits in a horizontally scrolling box, so a wide table never widens the
page; the note column keeps a readable width; the bar charts' legend sits beside the bars; the
view x illumination grids of a page share one colour scale (so their colours compare).

Clicking a header sorts its table; a link ending in ``#sort=<column>`` opens the page sorted by
that column.  After load the script marks ``<body>`` with ``data-sortable-ready`` (handlers
attached) and ``data-images-loaded`` (every figure decoded), which the browser test checks.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import polars as pl

from m2ad.text import printable

from leaderboard.aggregate import (
    best_per_column,
    display_cell,
    display_columns,
    metric_columns,
    split_tables,
    summarize,
    table_title,
    to_markdown,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MatplotlibFigure

INDEX_FILE = "index.html"
MARKDOWN_FILE = "leaderboard.md"
FIGURES_DIR = "figures"
PAGE_TITLE = "M2AD leaderboard"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1200px; }
.scroll { overflow-x: auto; max-width: 100%; margin: 1rem 0; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; vertical-align: top; }
#entries td { white-space: nowrap; }
#notes li { margin: 0.3rem 0; max-width: 60rem; line-height: 1.4; }
td a, td code { overflow-wrap: anywhere; }
th { background: #f2f2f2; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; color: #0a6b2d; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
.note { color: #444; font-size: 0.85rem; }
"""

_SCRIPT = """
(function () {
  function cellKey(cell) {
    var raw = cell.getAttribute("data-value");
    if (raw !== null && raw !== "") { return [0, parseFloat(raw)]; }
    return [1, cell.textContent.trim().toLowerCase()];
  }
  function sortBy(table, index, header) {
    var body = table.tBodies[0];
    var descending = header.getAttribute("aria-sort") !== "descending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a.cells[index]), y = cellKey(b.cells[index]);
      if (x[0] !== y[0]) { return x[0] - y[0]; }
      var order = x[1] < y[1] ? -1 : (x[1] > y[1] ? 1 : 0);
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
      header.addEventListener("click", function () { sortBy(table, index, header); });
    });
  });
  // A link such as index.html#sort=view_auroc opens every table sorted by that column.
  var wanted = /^#sort=(.+)$/.exec(window.location.hash);
  if (wanted) {
    var name = decodeURIComponent(wanted[1]);
    document.querySelectorAll("table.sortable").forEach(function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
        if (header.textContent === name) { sortBy(table, index, header); }
      });
    });
  }
  document.body.setAttribute("data-sortable-ready", "1");
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var loaded = images.every(function (img) { return img.complete && img.naturalWidth > 0; });
    document.body.setAttribute("data-images-loaded", loaded ? String(images.length) : "0");
  });
})();
"""


@dataclass(frozen=True)
class Figure:
    """One rendered figure: its path relative to the site root and its caption."""

    path: str
    caption: str


def _plain(text: str, limit: int = 48) -> str:
    """User text safe for a matplotlib label (``$`` would start mathtext, control characters
    are escaped), cut to ``limit``."""
    text = printable(text)
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _entry_label(row: dict) -> str:
    variant = f" ({row['variant']})" if row.get("variant") else ""
    return f"{row['method']}{variant}"


def _safe_href(url: str) -> str | None:
    """``url`` if it is an http(s) link (no ``javascript:`` or data URLs), else ``None``."""
    return url if urlsplit(url.strip()).scheme in ("http", "https") else None


def _save(figure: MatplotlibFigure, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically (temp name, then ``os.replace``) and close it."""
    import matplotlib.pyplot as plt

    temp = path.with_name(f".{path.name}.tmp")
    figure.savefig(temp, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    os.replace(temp, path)


def bar_chart_figure(part: pl.DataFrame, title: str) -> MatplotlibFigure:
    """Grouped bars: one group per entry, one bar per metric (mean over categories, %)."""
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = metric_columns(part)
    labels = [_plain(_entry_label(row)) for row in part.iter_rows(named=True)]
    positions = np.arange(len(labels))
    width = 0.8 / max(len(metrics), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 2), 4.0))
    for index, metric in enumerate(metrics):
        values = [np.nan if value is None else 100.0 * value for value in part[metric].to_list()]
        axes.bar(positions + (index - (len(metrics) - 1) / 2) * width, values, width, label=metric)
    axes.set_xticks(positions, labels, rotation=30, ha="right")
    axes.set_ylabel("mean over categories (%)")
    axes.set_ylim(0, 100)
    axes.set_title(_plain(title))
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # beside the bars, never on them
    return figure


def _heatmap(matrix: list[list[float]], rows: list[str], columns: list[str], path: Path, title: str,
             scale: tuple[float, float] | None = None) -> None:
    """A labelled heatmap of percentages (NaN cells left blank), coloured over ``scale`` (default:
    its own lowest value to 100)."""
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array(matrix, dtype=float)
    low, high = scale or (float(np.nanmin(data)) if np.isfinite(data).any() else 0.0, 100.0)
    figure, axes = plt.subplots(figsize=(max(5.0, 0.7 * len(columns) + 3), max(2.5, 0.45 * len(rows) + 1.5)))
    image = axes.imshow(data, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    axes.set_xticks(range(len(columns)), [_plain(name) for name in columns], rotation=45, ha="right")
    axes.set_yticks(range(len(rows)), [_plain(name) for name in rows])
    for (y, x), value in np.ndenumerate(data):
        if np.isfinite(value):
            axes.text(x, y, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white" if value < 80 else "black")
    axes.set_title(_plain(title))
    figure.colorbar(image, ax=axes, label="%")
    _save(figure, path)


def _category_heatmap(rows: pl.DataFrame, part: pl.DataFrame, path: Path, title: str) -> str | None:
    """Entries x categories heatmap of the table's first metric; returns the metric used."""
    metrics = metric_columns(part)
    if not metrics:
        return None
    metric = metrics[0]
    per_category = summarize(rows.filter(pl.col("entry_id").is_in(part["entry_id"].to_list())), by="category")
    categories = sorted(per_category["category"].unique().to_list())
    matrix, labels = [], []
    for row in part.iter_rows(named=True):
        values = per_category.filter(pl.col("entry_id") == row["entry_id"])
        lookup = dict(zip(values["category"].to_list(), values[metric].to_list())) if metric in values.columns else {}
        matrix.append([float("nan") if lookup.get(name) is None else 100.0 * lookup[name] for name in categories])
        labels.append(_entry_label(row))
    _heatmap(matrix, labels, categories, path, f"{title} — {metric}")
    return metric


def _grid_metric(rows: pl.DataFrame) -> str | None:
    """The AUROC metric of the view x illumination breakdown rows (image level first)."""
    names = rows["metric"].unique().to_list()
    for preferred in ("image_auroc", "view_auroc", "object_auroc"):
        if preferred in names:
            return preferred
    aurocs = sorted(name for name in names if name.endswith("auroc"))
    return aurocs[0] if aurocs else None


@dataclass(frozen=True)
class Grid:
    """One entry's views x illuminations AUROC grid (mean over categories, %)."""

    metric: str
    views: list[str]
    lights: list[str]
    matrix: list[list[float]]


def view_illumination_grid(rows: pl.DataFrame, entry: dict) -> Grid | None:
    """The grid of one entry, if it has breakdown rows."""
    grid_rows = rows.filter(
        (pl.col("entry_id") == entry["entry_id"]) & pl.col("view").is_not_null() & pl.col("illumination").is_not_null()
    )
    metric = _grid_metric(grid_rows) if not grid_rows.is_empty() else None
    if metric is None:
        return None
    means = grid_rows.filter(pl.col("metric") == metric).group_by(["view", "illumination"]).agg(pl.col("value").mean())
    views = sorted(means["view"].unique().to_list())
    lights = sorted(means["illumination"].unique().to_list())
    lookup = {(v, i): value for v, i, value in means.iter_rows()}
    matrix = [[float("nan") if lookup.get((v, i)) is None else 100.0 * lookup[(v, i)] for i in lights] for v in views]
    return Grid(metric, views, lights, matrix)


def shared_scale(grids: list[Grid]) -> tuple[float, float]:
    """One colour scale for every grid of a page: the lowest value of any of them (floored to a
    multiple of 5) to 100 %."""
    values = [value for grid in grids for row in grid.matrix for value in row if value == value]
    return (5.0 * math.floor(min(values) / 5.0) if values else 0.0, 100.0)


def render_figures(rows: pl.DataFrame, summary: pl.DataFrame, out: Path) -> dict[int, list[Figure]]:
    """Write every figure under ``out/figures``; returns them per table index."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out / FIGURES_DIR).glob("table*.png"):  # from an earlier render of this folder
        stale.unlink()
    figures: dict[int, list[Figure]] = {}
    tables = list(split_tables(summary))
    grids = {(index, number): grid for index, (_, part) in enumerate(tables) for number, entry in enumerate(part.iter_rows(named=True))
             if (grid := view_illumination_grid(rows, entry)) is not None}
    scale = shared_scale(list(grids.values()))
    for index, (key, part) in enumerate(tables):
        title = table_title(key)
        table_rows = rows.filter(pl.col("entry_id").is_in(part["entry_id"].implode()))
        found = []
        bars = f"{FIGURES_DIR}/table{index:02d}-bars.png"
        _save(bar_chart_figure(part, title), out / bars)
        found.append(Figure(bars, f"Mean over categories per method — {title}"))
        heatmap = f"{FIGURES_DIR}/table{index:02d}-categories.png"
        metric = _category_heatmap(table_rows, part, out / heatmap, title)
        if metric:
            found.append(Figure(heatmap, f"Per-category {metric} — {title}"))
        for number, entry in enumerate(part.iter_rows(named=True)):
            grid = grids.get((index, number))
            if grid is None:
                continue
            name = f"{FIGURES_DIR}/table{index:02d}-entry{number:02d}-grid.png"
            _heatmap(grid.matrix, [f"view {v}" for v in grid.views], [f"illum. {i}" for i in grid.lights], out / name,
                     f"{_entry_label(entry)} — {grid.metric}", scale)
            found.append(Figure(name, f"View × illumination {grid.metric} — {_entry_label(entry)} "
                                      f"(colour scale {scale[0]:.0f}–{scale[1]:.0f} %, shared by every grid on this page)"))
        figures[index] = found
    return figures


def _html_table(part: pl.DataFrame) -> str:
    columns = display_columns(part)
    metrics = metric_columns(part)
    best = best_per_column(part)
    numeric = {*metrics, "categories", "mean_rank"}
    head = "".join(f'<th scope="col">{html.escape(printable(name))}</th>' for name in columns)
    body = []
    for row in part.iter_rows(named=True):
        cells = []
        for name in columns:
            value = row[name]
            text = html.escape(display_cell(name, value, metrics))
            if name in numeric:
                classes = "num best" if name in metrics and value is not None and value == best[name] else "num"
                data = "" if value is None else html.escape(repr(float(value)))
                cells.append(f'<td class="{classes}" data-value="{data}">{text}</td>')
            else:
                cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _html_entries(rows: pl.DataFrame) -> str:
    """Provenance of every entry: who, when, from what, the citation or link, and its note.

    Columns no entry fills are left out.  Notes are long and shared (every paper row carries
    the same caveats) and may differ between an entry's categories, so the table gives each
    entry the numbers of its distinct notes and the notes follow as a full-width numbered list:
    readable, and the table stays narrow."""
    columns = ["method", "variant", "backbone", "source", "setting", "shots", "train_dataset", "protocol_version", "submitter", "date",
               "code_version", "hardware", "predictions_sha256", "citation", "note"]
    entries = rows.group_by("entry_id", maintain_order=True).agg(
        [pl.col(name).first() for name in columns if name != "note"] + [pl.col("note").drop_nulls().unique(maintain_order=True)]
    ).sort(["source", "method"])
    filled = {name: entries[name].list.len().sum() if name == "note" else entries.height - entries[name].null_count() for name in columns}
    columns = [name for name in columns if filled[name]]
    notes = list(dict.fromkeys(printable(note) for entry_notes in entries["note"].to_list() for note in entry_notes))
    head = "".join(f'<th scope="col">{html.escape(name)}</th>' for name in ["entry_id", *columns])
    body = []
    for entry in entries.iter_rows(named=True):
        cells = []
        for name in ["entry_id", *columns]:
            value = entry[name]
            if name == "note":
                numbers = [notes.index(printable(note)) + 1 for note in value]
                cells.append(f'<td class="num" data-value="{numbers[0] if numbers else ""}">{", ".join(map(str, numbers))}</td>')
                continue
            text = "" if value is None else value.date().isoformat() if name == "date" else printable(value)
            if name == "citation" and text and _safe_href(text):
                cells.append(f'<td><a href="{html.escape(text, quote=True)}" rel="nofollow noopener">{html.escape(text)}</a></td>')
            elif name == "predictions_sha256" and text:
                cells.append(f'<td title="{html.escape(text, quote=True)}"><code>{html.escape(text[:12])}</code></td>')
            else:
                cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    listed = "".join(f'<li class="note">{html.escape(note)}</li>' for note in notes)
    return (f'<div class="scroll"><table class="sortable" id="entries"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>' + (f'<h3>Notes</h3><ol id="notes">{listed}</ol>' if notes else ""))


def render_html(rows: pl.DataFrame, summary: pl.DataFrame, figures: dict[int, list[Figure]]) -> str:
    """The whole ``index.html`` as a string."""
    sections = []
    for index, (key, part) in enumerate(split_tables(summary)):
        anchor = f"table{index:02d}"
        images = "".join(
            f'<figure><img src="{html.escape(figure.path, quote=True)}" alt="{html.escape(printable(figure.caption), quote=True)}">'
            f"<figcaption>{html.escape(printable(figure.caption))}</figcaption></figure>"
            for figure in figures.get(index, [])
        )
        sections.append(
            f'<section id="{anchor}" data-protocol="{html.escape(printable(key["protocol"]), quote=True)}" '
            f'data-resolution="{html.escape(printable(key["resolution"]), quote=True)}" '
            f'data-setting="{html.escape(printable(key["setting"] or ""), quote=True)}">'
            f"<h2>{html.escape(table_title(key))}</h2>{_html_table(part)}{images}</section>"
        )
    if not sections:
        sections.append("<p>No leaderboard rows yet.</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{PAGE_TITLE}</title><style>{_CSS}</style></head><body>"
        f"<h1>{PAGE_TITLE}</h1>"
        '<p class="note">Values are percentages: the mean over categories, as the M2AD paper reports it; '
        "the best value of each column is in bold green. Click a column header to sort. "
        "Rank 1 is best; <code>mean_rank</code> averages the ranks over the metrics shown.</p>"
        + "".join(sections)
        + f"<h2>Entries</h2>{_html_entries(rows)}"
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def render_site(rows: pl.DataFrame, out: str | Path) -> Path:
    """Render store rows into the folder ``out`` (created; files replaced atomically) and
    return the path of ``index.html``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    figures = render_figures(rows, summary, out)
    _write_text(out / MARKDOWN_FILE, f"# {PAGE_TITLE}\n\nValues are percentages (mean over categories).\n\n" + to_markdown(summary))
    _write_text(out / INDEX_FILE, render_html(rows, summary, figures))
    return out / INDEX_FILE


def _write_text(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
