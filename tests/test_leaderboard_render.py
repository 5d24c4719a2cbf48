"""`m2ad leaderboard render`: a self-contained page whose user strings are inert, opened in
headless Chromium (tables, sorting script, figures), with a screenshot kept as an artifact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from leaderboard import paper
from leaderboard.store import Store, to_table
from m2ad.cli import app

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
EVIL_METHOD = '<script>alert("m")</script><img src=x onerror=alert(1)>'
EVIL_VARIANT = '" onmouseover="alert(2)'
EVIL_SUBMITTER = "</td></tr></table><iframe src=//evil>"
EVIL_CITATION = "javascript:alert(3)"
EVIL_NOTE = "$\\alpha$ | [x](javascript:alert(4)) `code`"
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "code", "section", "div", "table",
                "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption", "script", "a", "ol", "li"}


def evil_rows() -> list[dict]:
    """A submission with hostile strings everywhere, with a view x illumination breakdown."""
    base = {
        "entry_id": "submission/synergy/exact/0123456789abcdef", "source": "submission", "method": EVIL_METHOD,
        "variant": EVIL_VARIANT, "backbone": "wrn50", "protocol": "synergy", "mode": "exact", "mask_rule": "exact",
        "dataset": "m2ad", "resolution": "256", "setting": "single-class", "submitter": EVIL_SUBMITTER, "citation": EVIL_CITATION,
        "note": EVIL_NOTE, "predictions_sha256": "0123456789abcdef" * 4,
    }
    rng = np.random.default_rng(0)
    rows = []
    for category in ("Bird", "Car", "Cube"):
        for metric in ("object_auroc", "view_auroc", "view_aupro"):
            rows.append({**base, "category": category, "metric": metric, "value": float(rng.uniform(0.5, 1))})
        for view in ("000", "030", "060", "090"):
            for light in ("01", "02", "03"):
                rows.append({**base, "category": category, "view": view, "illumination": light, "metric": "view_auroc",
                             "value": float(rng.uniform(0.5, 1))})
    return rows


class TagCollector(HTMLParser):
    """Every start tag with its attributes, and all text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


class TableCollector(HTMLParser):
    """Each table as (header texts, rows of cell ``data-value`` or text)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self._cell: list[str] | None = None
        self._value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell, self._value = [], dict(attrs).get("data-value")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = self._value if tag == "td" and self._value else "".join(self._cell).strip()
            headers, rows = self.tables[-1]
            (headers if tag == "th" else rows[-1]).append(text)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables_of(page: str) -> list[tuple[list[str], list[list[str]]]]:
    collector = TableCollector()
    collector.feed(page)
    return [(headers, [row for row in rows if row]) for headers, rows in collector.tables]


def synthetic_rows(low: float = 0.2, high: float = 0.6) -> list[dict]:
    """A run on the synthetic M2AD, with a breakdown in another value range than the submission's."""
    rng = np.random.default_rng(1)
    return [{**row, "entry_id": "run/synthetic", "source": "run", "dataset": "m2ad-synth", "method": "gaussian", "variant": None,
             "submitter": None, "citation": None, "note": None, "predictions_sha256": None, "value": float(rng.uniform(low, high))}
            for row in evil_rows()]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Paper rows plus the hostile submission."""
    store_dir = tmp_path_factory.mktemp("board")
    store = Store(store_dir)
    paper.seed(store)
    store.append(to_table(evil_rows()))
    return store_dir


@pytest.fixture(scope="module")
def site(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper rows and the hostile submission, rendered through the CLI."""
    out = tmp_path_factory.mktemp("site")
    result = CliRunner().invoke(app, ["leaderboard", "render", str(out), "--store", str(store_dir)])
    assert result.exit_code == 0, result.output
    return out


def test_site_files_and_markdown_copy(site: Path) -> None:
    assert (site / "index.html").is_file() and (site / "leaderboard.md").is_file()
    figures = sorted(path.name for path in (site / "figures").glob("*.png"))
    # per table (synergy 256, synergy 512): bars + category heatmap; one grid for the breakdown entry
    assert sum(name.endswith("-bars.png") for name in figures) == 2
    assert sum(name.endswith("-categories.png") for name in figures) == 2
    assert sum(name.endswith("-grid.png") for name in figures) == 1
    for name in figures:
        with Image.open(site / "figures" / name) as image:
            assert image.width > 100 and image.height > 100
    markdown = (site / "leaderboard.md").read_text()
    assert re.search(r"(?<!\\)[<>]", markdown) is None and "\\<script\\>" in markdown


def test_user_strings_are_inert_in_the_html(site: Path) -> None:
    page = (site / "index.html").read_text()
    parser = TagCollector()
    parser.feed(page)
    tags = [tag for tag, _ in parser.tags]
    assert set(tags) <= ALLOWED_TAGS, set(tags) - ALLOWED_TAGS
    assert tags.count("script") == 1 and "iframe" not in tags
    for tag, attrs in parser.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("figures/") and attrs["src"].endswith(".png")
            assert (site / attrs["src"]).is_file()
        if tag == "a":
            assert attrs["href"].startswith(("http://", "https://"))
    text = "".join(parser.text)
    for hostile in (EVIL_METHOD, EVIL_SUBMITTER, EVIL_CITATION, EVIL_NOTE):
        assert hostile in text  # shown verbatim, as text
    assert "javascript:" not in " ".join(str(value) for _, attrs in parser.tags for value in attrs.values())
    notes = [attrs for tag, attrs in parser.tags if tag == "li"]
    assert len(notes) == len({row["note"] for row in paper.paper_rows()} | {EVIL_NOTE})  # each distinct note once
    assert paper.RDPP_NOTE in text  # a note of some categories only is on the page too
    assert "cdn" not in page.lower() and "http://" not in page.split("<h2>Entries</h2>")[0]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is required for the rendered-page test: `make test` installs Debian's `chromium` (tools/ensure-chromium)")


def _chromium_run(site: Path, profile: Path, *args: str, fragment: str = "") -> subprocess.CompletedProcess:
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", *args, (site / "index.html").as_uri() + fragment,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(profile)})


def test_page_opens_in_headless_chromium(site: Path, tmp_path: Path) -> None:
    dumped = _chromium_run(site, tmp_path / "profile", "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    parser = TagCollector()
    parser.feed(dumped.stdout)
    body = next(attrs for tag, attrs in parser.tags if tag == "body")
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert body.get("data-sortable-ready") == "1", "the sorting script did not run"
    assert len(images) == 5 and body.get("data-images-loaded") == str(len(images)), "figures did not load"
    sections = [attrs for tag, attrs in parser.tags if tag == "section"]
    assert [(s["data-protocol"], s["data-resolution"]) for s in sections] == [("synergy", "256"), ("synergy", "512")]
    rows = sum(1 for tag, _ in parser.tags if tag == "tr")
    # per table: header + entries (6 at 256 with the submission, 5 at 512); entries table: header + 11
    assert rows == (1 + 6) + (1 + 5) + (1 + 11)
    assert not any(tag in ("iframe",) for tag, _ in parser.tags)
    assert EVIL_METHOD in "".join(parser.text)

    # the sorting code itself: open the page sorted by a column, read the order back
    by_column = _chromium_run(site, tmp_path / "profile", "--dump-dom", fragment="#sort=view_aupro")
    assert by_column.returncode == 0, by_column.stderr[-2000:]
    headers, rows = _tables_of(by_column.stdout)[0]
    position = headers.index("view_aupro")
    values = [float(row[position]) for row in rows]
    assert len(values) == 6 and values == sorted(values, reverse=True)
    assert values != [float(row[position]) for row in _tables_of((site / "index.html").read_text())[0][1]]

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "leaderboard-page.png"
    shot.unlink(missing_ok=True)
    taken = _chromium_run(site, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280) and pixels.std() > 10, "the screenshot is blank"


_MEASURE = """
<script>
window.addEventListener("load", function () {
  var width = document.documentElement.clientWidth, problems = [];
  if (document.documentElement.scrollWidth > width) { problems.push("the page scrolls sideways: " + document.documentElement.scrollWidth); }
  document.querySelectorAll("table").forEach(function (table, index) {
    var box = table.parentElement;
    if (!box.classList.contains("scroll") || getComputedStyle(box).overflowX !== "auto") { problems.push("table " + index + " is not in a scroll box"); }
    if (box.getBoundingClientRect().right > width + 1) { problems.push("table " + index + "'s box is wider than the page"); }
  });
  document.querySelectorAll("#entries tbody tr").forEach(function (row) {
    if (row.getBoundingClientRect().height > 40) { problems.push("an entry row is " + row.getBoundingClientRect().height + " px tall"); }
  });
  var body = document.body.getBoundingClientRect().width;
  document.querySelectorAll("#notes li").forEach(function (note) {
    if (note.getBoundingClientRect().width < Math.min(500, 0.8 * body)) { problems.push("a note is " + note.getBoundingClientRect().width + " px wide"); }
  });
  document.body.setAttribute("data-layout", problems.length ? problems.join("; ") : "ok");
});
</script>
"""


@pytest.mark.parametrize("window", ["1280,2000", "760,2000"])
def test_tables_fit_the_page_and_notes_are_readable(site: Path, tmp_path: Path, window: str) -> None:
    measured = tmp_path / "site"
    shutil.copytree(site, measured)
    page = measured / "index.html"
    page.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    dumped = _chromium_run(measured, tmp_path / "profile", "--dump-dom", f"--window-size={window}")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    parser = TagCollector()
    parser.feed(dumped.stdout)
    body = next(attrs for tag, attrs in parser.tags if tag == "body")
    assert body.get("data-layout") == "ok"


def test_the_bar_chart_legend_covers_no_bar(store_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from leaderboard.aggregate import split_tables, summarize, table_title
    from leaderboard.render import bar_chart_figure

    for key, part in split_tables(summarize(Store(store_dir).read())):
        figure = bar_chart_figure(part, table_title(key))
        figure.canvas.draw()
        (axes,) = figure.axes
        legend = axes.get_legend().get_window_extent()
        bars = [patch.get_window_extent() for patch in axes.patches if np.isfinite(patch.get_height()) and patch.get_height() > 0]
        assert bars and not [bar for bar in bars if legend.overlaps(bar)]


def test_view_illumination_grids_share_one_colour_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from leaderboard import render

    drawn = []
    original = render._heatmap

    def recording(matrix, rows, columns, path, title, scale=None):  # noqa: ANN001, ANN202
        drawn.append((path.name, np.array(matrix, dtype=float), scale))
        return original(matrix, rows, columns, path, title, scale)

    monkeypatch.setattr(render, "_heatmap", recording)
    render.render_site(pl.from_arrow(to_table(evil_rows() + synthetic_rows(0.2, 0.6))), tmp_path / "site")
    grids = [(matrix, scale) for name, matrix, scale in drawn if name.endswith("-grid.png")]
    assert len(grids) == 2 and grids[0][1] is not None and grids[0][1] == grids[1][1]
    low, high = grids[0][1]
    assert low <= min(np.nanmin(matrix) for matrix, _ in grids) and high >= max(np.nanmax(matrix) for matrix, _ in grids)
    assert "shared by every grid" in (tmp_path / "site" / "index.html").read_text()


def test_render_and_publish_filter_the_entries(store_dir: Path, tmp_path: Path) -> None:
    board = tmp_path / "board"
    shutil.copytree(store_dir, board)
    Store(board).append(to_table(synthetic_rows()))
    runner = CliRunner()
    everything = runner.invoke(app, ["leaderboard", "render", str(tmp_path / "all"), "--store", str(board)])
    assert everything.exit_code == 0 and "run/synthetic" in (tmp_path / "all" / "index.html").read_text()
    real = runner.invoke(app, ["leaderboard", "render", str(tmp_path / "real"), "--no-synthetic", "--store", str(board)])
    assert real.exit_code == 0, real.output
    page = (tmp_path / "real" / "index.html").read_text()
    assert "run/synthetic" not in page and "m2ad-synth" not in page and "paper/synergy/m2ad-256/CDO" in page
    papers = runner.invoke(app, ["leaderboard", "render", str(tmp_path / "paper"), "--source", "paper", "--store", str(board)])
    assert papers.exit_code == 0 and "submission/" not in (tmp_path / "paper" / "index.html").read_text()
    published = runner.invoke(app, ["leaderboard", "publish", "--repo", "m2ad/board", "--dry-run", "--out", str(tmp_path / "up"),
                                    "--no-synthetic", "--store", str(board)])
    assert published.exit_code == 0, published.output
    uploaded = pl.read_parquet(tmp_path / "up" / "data" / "leaderboard.parquet")
    assert "m2ad-synth" not in set(uploaded["dataset"]) and uploaded.height == Store(store_dir).read().height
    bad = runner.invoke(app, ["leaderboard", "render", str(tmp_path / "bad"), "--source", "papers", "--store", str(board)])
    assert bad.exit_code == 2 and "--source must be one of" in " ".join(bad.output.split())
