"""Pixel metrics side by side: m2ad.metrics (exact, streaming, compat), scikit-learn, sort-based AUPRO.

Run: ``.venv/bin/python benchmarks/metrics.py`` (full: 100 maps of 1024^2 and 100 of 256^2;
several minutes and ~10 GB of memory, mostly scikit-learn) or ``--quick`` (a small smoke run).
Everything is measured in one run on the same synthetic data, so the ratios hold on a loaded
machine even when the absolute times do not.  Peak memory is the peak of traced allocations
(``tracemalloc``, which sees numpy's buffers) during each call, on top of the data itself.

Synthetic data: smooth noise (low-resolution Gaussian noise, bilinearly upsampled, plus a
little white noise); every other map is anomalous with 1-3 random ellipses (about 100 regions
per 100 maps) whose score bump extends past the ellipse, so defect and normal scores overlap.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from bisect import bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from m2ad.metrics import PixelMetricAccumulator, map_value_range, pixel_metrics

KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")


def synthetic_pair(rng: np.random.Generator, size: int, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
    """One float32 anomaly map and its boolean mask (see the module docstring)."""
    grid = size // 32 + 2
    anomaly_map = ndimage.zoom(rng.standard_normal((grid, grid)).astype(np.float32), size / grid, order=1)[:size, :size]
    anomaly_map += 0.3 * rng.standard_normal((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    if anomalous:
        for _ in range(rng.integers(1, 4)):
            centre_y, centre_x = rng.uniform(0.1, 0.9, 2) * size
            axis_y, axis_x = rng.uniform(0.01, 0.06, 2) * size
            angle = rng.uniform(0, np.pi)
            reach = int(max(axis_y, axis_x) * 1.6) + 2
            top, bottom = int(max(centre_y - reach, 0)), int(min(centre_y + reach, size))
            left, right = int(max(centre_x - reach, 0)), int(min(centre_x + reach, size))
            y, x = np.mgrid[top:bottom, left:right].astype(np.float32)
            dy, dx = y - centre_y, x - centre_x
            u = (dx * np.cos(angle) + dy * np.sin(angle)) / axis_x
            v = (-dx * np.sin(angle) + dy * np.cos(angle)) / axis_y
            radius = np.sqrt(u * u + v * v)
            mask[top:bottom, left:right] |= radius <= 1
            anomaly_map[top:bottom, left:right] += np.clip(1.5 - radius, 0, 1) * 3.0
    return anomaly_map, mask


def synthetic_stream(count: int, size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``count`` (map, mask) pairs, generated one at a time."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        yield synthetic_pair(rng, size, anomalous=index % 2 == 0)


def sklearn_metrics(maps: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    """scikit-learn's three calls on the concatenated pixels (AUPRO is not in scikit-learn)."""
    scores = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([m.ravel() for m in masks])
    precision, recall, _ = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return {
        "pixel_auroc": float(roc_auc_score(labels, scores)),
        "pixel_ap": float(average_precision_score(labels, scores)),
        "pixel_f1max": float(f1.max()),
    }


def sort_based_aupro(maps: list[np.ndarray], masks: list[np.ndarray], limit: float = 0.3) -> float:
    """The MVTec AD official algorithm, written plainly: one argsort of all pixels, cumulative sums."""
    fp_changes = np.concatenate([(~m).ravel() for m in masks]).astype(np.uint32)
    pro_changes = np.zeros(fp_changes.size, dtype=np.float64)
    regions, offset = 0, 0
    for mask in masks:
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())
        pro_changes[offset : offset + mask.size] = np.where(labels > 0, 1.0 / sizes[labels], 0.0).ravel()
        regions, offset = regions + count, offset + mask.size
    scores = np.concatenate([m.ravel() for m in maps])
    order = np.argsort(scores)[::-1]
    scores = scores[order]
    fp = np.cumsum(fp_changes[order], dtype=np.uint64)
    pro = np.cumsum(pro_changes[order])
    keep = np.append(np.diff(scores) != 0, True)
    fprs = np.concatenate([[0.0], np.minimum(fp[keep] / fp[-1], 1.0), [1.0]])
    pros = np.concatenate([[0.0], np.minimum(pro[keep] / regions, 1.0), [1.0]])
    correction = 0.0
    if limit not in fprs:
        at = bisect_right(fprs, limit)
        y_limit = pros[at - 1] + (pros[at] - pros[at - 1]) * (limit - fprs[at - 1]) / (fprs[at] - fprs[at - 1])
        correction = 0.5 * (y_limit + pros[at - 1]) * (limit - fprs[at - 1])
    inside = fprs <= limit
    x, y = fprs[inside], pros[inside]
    return float((np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)) + correction) / limit)


def measure(function: Callable[[], object]) -> tuple[object, float, float]:
    """(result, seconds, peak traced MiB) of one call."""
    tracemalloc.reset_peak()
    start_memory = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    peak = (tracemalloc.get_traced_memory()[1] - start_memory) / 2**20
    return result, seconds, peak


def streaming_peak(count: int, size: int, value_range: tuple[float, float]) -> float:
    """Peak traced MiB of streaming ``count`` lazily generated maps through one accumulator."""

    def run() -> dict[str, float]:
        accumulator = PixelMetricAccumulator("streaming", value_range=value_range)
        for anomaly_map, mask in synthetic_stream(count, size, seed=1):
            accumulator.update([anomaly_map], [mask])
        return accumulator.compute()

    return measure(run)[2]


def benchmark_size(count: int, size: int, run_sklearn: bool) -> dict[str, object]:
    """All implementations on ``count`` maps of ``size``^2; times, peaks, values, deviations."""
    pairs = list(synthetic_stream(count, size, seed=0))
    maps, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    rows: dict[str, dict[str, object]] = {}

    def record(name: str, function: Callable[[], object]) -> object:
        result, seconds, peak = measure(function)
        rows[name] = {"seconds": seconds, "peak_mib": peak}
        print(f"  {name:<28} {seconds:9.3f} s  peak {peak:9.1f} MiB", flush=True)
        return result

    exact = record("m2ad exact", lambda: pixel_metrics(maps, masks))
    half = [anomaly_map.astype(np.float16) for anomaly_map in maps]  # as predictions files store them
    exact_half = record("m2ad exact, float16 maps", lambda: pixel_metrics(half, masks))
    half.clear()  # free the float16 copies before the next measurement
    value_range = record("value range pass", lambda: map_value_range(maps))
    streaming_accumulator = PixelMetricAccumulator("streaming", value_range=value_range)

    def stream() -> dict[str, float]:
        streaming_accumulator.update(maps, masks)
        return streaming_accumulator.compute()

    streaming = record("m2ad streaming", stream)
    compat = record("m2ad compat", lambda: pixel_metrics(maps, masks, mode="compat", value_range=value_range))
    official = record("sort-based AUPRO", lambda: sort_based_aupro(maps, masks))
    result: dict[str, object] = {
        "maps": count,
        "size": size,
        "pixels": count * size * size,
        "regions": int(sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks)),
        "defect_pixels": int(sum(int(m.sum()) for m in masks)),
        "timings": rows,
        "exact": exact,
        "exact_float16_minus_float32": {k: exact_half[k] - exact[k] for k in KEYS},
        "streaming_minus_exact": {k: streaming[k] - exact[k] for k in KEYS},
        "streaming_error_bounds": streaming_accumulator.error_bounds(),
        "compat": compat,
        "compat_minus_exact": {k: compat[k] - exact[k] for k in KEYS},
        "sort_based_aupro_minus_exact": official - exact["aupro"],
    }
    if run_sklearn:
        reference = record("scikit-learn (3 calls)", lambda: sklearn_metrics(maps, masks))
        result["sklearn_minus_exact"] = {k: reference[k] - exact[k] for k in reference}
    seconds = {name: row["seconds"] for name, row in rows.items()}
    ratios = {
        "sort_aupro / exact": seconds["sort-based AUPRO"] / seconds["m2ad exact"],
        "sort_aupro / exact_float16": seconds["sort-based AUPRO"] / seconds["m2ad exact, float16 maps"],
        "sort_aupro / streaming": seconds["sort-based AUPRO"] / seconds["m2ad streaming"],
        "sort_aupro / compat": seconds["sort-based AUPRO"] / seconds["m2ad compat"],
    }
    if run_sklearn:
        ratios["sklearn / exact"] = seconds["scikit-learn (3 calls)"] / seconds["m2ad exact"]
        ratios["sklearn / streaming"] = seconds["scikit-learn (3 calls)"] / seconds["m2ad streaming"]
    result["ratios"] = ratios
    return result


def main() -> None:
    """Run the benchmark and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run: 20 maps of 256^2 and 20 of 64^2")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (the slowest, most memory)")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    count, sizes, memory_size = (20, (256, 64), 64) if args.quick else (100, (1024, 256), 256)
    tracemalloc.start()
    report: dict[str, object] = {"sizes": []}
    for size in sizes:
        print(f"{count} maps of {size}x{size}:", flush=True)
        figures = benchmark_size(count, size, run_sklearn=not args.no_sklearn)
        report["sizes"].append(figures)  # type: ignore[union-attr]
        for key in ("ratios", "streaming_minus_exact", "streaming_error_bounds", "compat_minus_exact"):
            print(f"  {key}: " + ", ".join(f"{k}={v:.3g}" for k, v in figures[key].items()))  # type: ignore[union-attr]
        for key in ("sort_based_aupro_minus_exact", "sklearn_minus_exact", "exact"):
            if key in figures:
                print(f"  {key}: {figures[key]}")
    value_range = map_value_range(m for m, _ in synthetic_stream(count, memory_size, seed=1))
    small, large = streaming_peak(count, memory_size, value_range), streaming_peak(10 * count, memory_size, value_range)
    report["streaming_memory"] = {"size": memory_size, "maps": count, "peak_mib": small, "peak_mib_10x": large,
                                  "ratio": large / small}
    print(f"streaming peak, {count} vs {10 * count} maps of {memory_size}^2: {small:.1f} vs {large:.1f} MiB "
          f"(x{large / small:.3f})")
    if args.output:
        temporary = args.output.with_suffix(args.output.suffix + ".tmp")
        temporary.write_text(json.dumps(report, indent=2))
        temporary.replace(args.output)


if __name__ == "__main__":
    main()
