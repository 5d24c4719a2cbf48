"""Compat modes against hand-computed cases and a brute-force restatement of the official evaluation.

Each hand-computed case isolates one behaviour of the official M2AD evaluation (docs/metrics.md,
"compat") that a plain binned evaluator gets wrong.  The property tests compare both compat modes
with ``compat_reference`` on maps with heavy ties, constant maps and many class-maximum pixels.
"""

from __future__ import annotations

import math
import pickle
import types
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compat_reference import official_pixel_metrics
from m2ad.metrics import COMPAT_MAP_DTYPES, PixelMetricAccumulator, UndefinedMetricWarning, map_value_range, pixel_metrics

KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")


def f1(hits: int, predicted: int, positives: int) -> float:
    """M2AD's pooled F1 at one threshold, with its 1e-8 guards."""
    precision, recall = hits / (predicted + 1e-8), hits / (positives + 1e-8)
    return 2 * precision * recall / (precision + recall + 1e-8)


# ---------------------------------------------------------------- hand-computed cases


def test_class_maximum_counts_in_the_top_strip_and_the_overflow_bin_for_float32() -> None:
    """Four normal pixels at 0 and one at 1; the defect pixel at 1 (the class maximum).

    float64 (``compat``): ``hi = 1 + 1e-9`` lies above the maximum, so both pixels at 1 fall in
    strip 49 only.  The points are (0, 0) (the empty top point, precision 1), (1/5, 1) and (1, 1):
    AUROC 0.9, AP (1 + 1/2) / 2 = 3/4, AUPRO (0.1 + 0.1) / 0.3 = 2/3.
    float32 (``compat-float32``): ``float32(1 + 1e-9) == 1``, so both pixels at 1 also count in
    the overflow bin: 6 normal and 2 defect counts.  The points are (1/6, 1/2), (1/3, 1) and (1, 1):
    AUROC 1/8 + 2/3 = 19/24 and AP 1/4.  AUPRO follows PRO from FPR 1/6 to the limit 0.3, where it
    is 0.9: 0.0933... / 0.3 = 14/45.
    """
    maps = [np.array([[0, 0, 0, 0, 1, 1]], dtype=np.float32)]
    masks = [np.array([[0, 0, 0, 0, 0, 1]], dtype=bool)]
    as_float64 = pixel_metrics(maps, masks, mode="compat")
    assert as_float64["pixel_auroc"] == pytest.approx(0.9, abs=1e-15)
    assert as_float64["pixel_ap"] == pytest.approx(0.75, abs=1e-15)
    assert as_float64["aupro"] == pytest.approx(2 / 3, abs=1e-15)
    as_float32 = pixel_metrics(maps, masks, mode="compat-float32")
    assert as_float32["pixel_auroc"] == pytest.approx(19 / 24, abs=1e-15)
    assert as_float32["pixel_ap"] == pytest.approx(0.25, abs=1e-15)
    assert as_float32["aupro"] == pytest.approx(14 / 45, abs=1e-15)
    # F1 does not bin: above every threshold below 1 are the two pixels at 1, one of them a defect
    assert as_float64["pixel_f1max"] == as_float32["pixel_f1max"] == pytest.approx(f1(1, 2, 1), abs=1e-15)


def test_the_empty_top_point_adds_precision_one_at_recall_zero() -> None:
    """float64: half of the pixels tie at the class maximum, and half of those are defects.
    ADEval's curve starts at (recall 0, precision 1), and the next point is (recall 1,
    precision 1/2), so the trapezoid "AP" is 3/4.  scikit-learn's AP is 1/2."""
    maps = [np.array([[0.0, 0.0, 2.0, 2.0]])]
    masks = [np.array([[0, 0, 1, 0]])]
    assert pixel_metrics(maps, masks, mode="compat")["pixel_ap"] == pytest.approx(0.75, abs=1e-15)
    assert pixel_metrics(maps, masks)["pixel_ap"] == pytest.approx(0.5, abs=1e-15)


@pytest.mark.filterwarnings("ignore:AUPRO is undefined")
def test_f1_normalises_and_thresholds_float64_maps_in_float64() -> None:
    """Class range [0, 1] and a defect pixel at float32(0.15) = 0.1500000059...

    In float64 it lies above the threshold 3 * 0.05 = 0.15000000000000002: at that threshold the
    defect and the pixel at 1 are predicted, F1(1 hit, 2 predicted).  In float32 (NumPy 1.26
    compares with float32(0.15)) it does not.  The best threshold is then 0.1, where two normal
    pixels at 0.12 are predicted too: F1(1 hit, 4 predicted)."""
    maps = [np.array([[0.0, 0.12, 0.12, 0.15, 1.0]], dtype=np.float32)]
    masks = [np.array([[0, 0, 0, 1, 0]])]
    assert pixel_metrics(maps, masks, mode="compat")["pixel_f1max"] == pytest.approx(f1(1, 2, 1), abs=1e-15)
    assert pixel_metrics(maps, masks, mode="compat-float32")["pixel_f1max"] == pytest.approx(f1(1, 4, 1), abs=1e-15)


def test_a_constant_float32_class_uses_histc_fallback_and_has_no_aupro() -> None:
    """A constant class: float32(v - 1e-9) == float32(v + 1e-9), so CUDA histc bins over [v - 1, v + 1]
    (every pixel in strip 25), and every pixel is also in the overflow bin (v >= float32(v + 1e-9)).
    The points are (1, 1) and (1/2, 1/2): AUROC 0.375.  No point has FPR <= 0.3, where ADEval's AUPRO
    raises an IndexError; compat-float32 reports it as undefined.  float64 puts every pixel in strip
    25 only: AUROC 0.5."""
    maps = [np.full((2, 2), 0.3, dtype=np.float32)]
    masks = [np.array([[1, 0], [0, 0]])]
    with pytest.warns(UndefinedMetricWarning, match="AUPRO is undefined"):
        as_float32 = pixel_metrics(maps, masks, mode="compat-float32")
    assert as_float32["pixel_auroc"] == pytest.approx(0.375, abs=1e-15)
    assert math.isnan(as_float32["aupro"])
    assert as_float32["pixel_f1max"] == 0.0  # M2AD's 0/0 normalisation: nothing is ever predicted
    assert pixel_metrics(maps, masks, mode="compat")["pixel_auroc"] == pytest.approx(0.5, abs=1e-15)


def test_float16_maps_are_evaluated_as_the_dtype_the_trainer_hands_over() -> None:
    """float16 maps are converted exactly: the same metrics as their float32 or float64 copies."""
    rng = np.random.default_rng(1)
    maps = [rng.normal(size=(9, 9)).astype(np.float16) for _ in range(3)]
    masks = [rng.random((9, 9)) < 0.2 for _ in range(3)]
    for mode, dtype in COMPAT_MAP_DTYPES.items():
        assert pixel_metrics(maps, masks, mode=mode) == pixel_metrics([m.astype(dtype) for m in maps], masks, mode=mode)


# ---------------------------------------------------------------- against the brute-force reference


@st.composite
def tied_maps(draw: st.DrawFn, min_side: int = 1) -> tuple[list[np.ndarray], list[np.ndarray], type]:
    """1-4 maps of up to 6 x 6 pixels drawn from a palette of 1-5 values (heavy ties, constant maps,
    many pixels at the class maximum), stored as float16 or float32, with some defect regions."""
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    palette = draw(st.lists(st.floats(-4, 4, width=16), min_size=1, max_size=5))
    count, height, width = draw(st.integers(1, 4)), draw(st.integers(min_side, 6)), draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    maps = [np.array(palette, dtype=dtype)[rng.integers(0, len(palette), (height, width))] for _ in range(count)]
    masks = [rng.random((height, width)) < draw(st.sampled_from([0.1, 0.4, 0.8])) for _ in range(count)]
    masks[0].flat[0], masks[-1].flat[-1] = True, False  # both classes present
    if draw(st.booleans()):  # normal and defect pixels at the class maximum
        top = max(float(m.max()) for m in maps)
        masks[0].flat[0] = True
        maps[0].flat[0] = maps[-1].flat[-1] = top
    return maps, masks, dtype


@settings(max_examples=150, deadline=None)
@given(tied_maps(), st.sampled_from(list(COMPAT_MAP_DTYPES)))
def test_compat_modes_equal_the_brute_force_reference(case: tuple, mode: str) -> None:
    maps, masks, _ = case
    expected = official_pixel_metrics(maps, masks, COMPAT_MAP_DTYPES[mode])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        result = pixel_metrics(maps, masks, mode=mode)
    for key in KEYS:
        if math.isnan(expected[key]):
            assert math.isnan(result[key]), key
        else:
            assert result[key] == pytest.approx(expected[key], abs=1e-12), key


@settings(max_examples=60, deadline=None)
@given(tied_maps(), st.sampled_from(list(COMPAT_MAP_DTYPES)), st.integers(0, 4))
def test_compat_accumulators_merge_to_the_same_values(case: tuple, mode: str, split: int) -> None:
    """Accumulators over disjoint parts, sharing the class range, pickled and merged, equal one
    accumulator over everything (the histograms are integer counts and exact weight sums)."""
    maps, masks, _ = case
    value_range = map_value_range(maps)
    parts = [PixelMetricAccumulator(mode, value_range=value_range) for _ in range(2)]
    parts[0].update(maps[:split], masks[:split])
    parts[1].update(maps[split:], masks[split:])
    merged = pickle.loads(pickle.dumps(parts[0])).merge(pickle.loads(pickle.dumps(parts[1])))
    whole = PixelMetricAccumulator(mode, value_range=value_range)
    whole.update(maps, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        expected, result = whole.compute(), merged.compute()
    for key in KEYS:
        assert (math.isnan(expected[key]) and math.isnan(result[key])) or result[key] == expected[key], key


# ---------------------------------------------------------------- against ADEval's own accumulator


def cuda_histc(values: np.ndarray, bins: int, low: float, high: float) -> np.ndarray:
    """``torch.histc`` as its CUDA kernel computes it (bounds cast to the input dtype, their
    min == max fallback, ``(int)((x - min) * bins / (max - min))`` in that dtype, last bin closed)."""
    kind = values.dtype.type
    lo, hi = kind(low), kind(high)
    if lo == hi and values.size:
        lo, hi = values.min(), values.max()
    if lo == hi:
        lo, hi = kind(lo - kind(1)), kind(hi + kind(1))
    inside = values[(values >= lo) & (values <= hi)]
    index = (((inside - lo) * kind(bins)) / (hi - lo)).astype(np.int64)
    index[index == bins] = bins - 1
    return np.bincount(index, minlength=bins).astype(kind)


@pytest.fixture
def adeval_cuda(monkeypatch: pytest.MonkeyPatch) -> type:
    """ADEval's ``EvalAccumulatorCuda`` (what M2AD runs) on CPU tensors: its statistics are
    allocated off the GPU, and ``torch.histc`` (whose CPU version refuses the float64 output
    slice ADEval passes for float32 maps, and treats min == max differently) is replaced by the
    CUDA kernel's arithmetic.  NumPy >= 2.4 lacks the ``np.trapz`` ADEval calls."""
    torch = pytest.importorskip("torch")
    import adeval.cuda_mem_effic as cuda_module
    from adeval import EvalAccumulatorCuda

    def zeros(*args: object, device: object = None, **kwargs: object) -> object:
        return torch.zeros(*args, **kwargs)

    def histogram_bins(values: object, bins: int, min: float, max: float) -> object:
        values = values.reshape(-1)
        stat = values.new_zeros(bins + 2, dtype=torch.float64)
        stat[1:-1] = torch.from_numpy(cuda_histc(values.numpy(), bins, min, max))
        stat[0] = values.less(min).count_nonzero()
        stat[-1] = values.greater_equal(max).count_nonzero()
        return stat

    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    monkeypatch.setattr(cuda_module, "torch", types.SimpleNamespace(**{**vars(torch), "zeros": zeros}))
    monkeypatch.setattr(cuda_module, "_histogram_bins", histogram_bins)
    return EvalAccumulatorCuda


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # the patches hold for every input
@given(tied_maps(min_side=2), st.sampled_from(list(COMPAT_MAP_DTYPES)))  # ADEval squeezes masks of one row
def test_compat_modes_equal_adeval_cuda_accumulator(adeval_cuda: type, case: tuple, mode: str) -> None:
    """Pixel AUROC, AUPR and AUPRO as ADEval's own curve and AUPRO code compute them from the
    official Evaluator's inputs (maps in the trainer's dtype, bounds min - 1e-9 and max + 1e-9)."""
    import torch

    maps, masks, _ = case
    stacked = np.stack(maps).astype(COMPAT_MAP_DTYPES[mode])
    low, high = float(stacked.min()) - 1e-9, float(stacked.max()) + 1e-9
    accumulator = adeval_cuda(low, high, low, high, skip_pixel_aupro=False, nstrips=50)
    accumulator.add_anomap_batch(torch.tensor(stacked), torch.tensor(np.stack(masks).astype(np.uint8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = accumulator.summary()
        except IndexError:  # ADEval's AUPRO with no curve point at FPR <= 0.3
            expected = None
        result = pixel_metrics(maps, masks, mode=mode)
    if expected is None:
        assert math.isnan(result["aupro"])
        return
    for key, theirs in (("pixel_auroc", "p_auroc"), ("pixel_ap", "p_aupr"), ("aupro", "p_aupro")):
        if math.isnan(expected[theirs]):
            assert math.isnan(result[key]), key
        else:
            assert result[key] == pytest.approx(expected[theirs], abs=1e-12), key


def test_merging_different_dtypes_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        PixelMetricAccumulator("compat", value_range=(0, 1)).merge(PixelMetricAccumulator("compat-float32", value_range=(0, 1)))
    with pytest.raises(ValueError, match="different value ranges"):
        PixelMetricAccumulator("compat", value_range=(0, 1)).merge(PixelMetricAccumulator("compat", value_range=(0, 2)))
