"""The work of one task: a fit (train one method, save its state) or a cell (predict one
category from a saved fit, write the predictions, evaluate them), and ``predict_with_fit``,
which scores new data with a saved fit.

A fit folder (``RUN_DIR/fits/<fit_id>/``)::

    training.json        the setting, the training data, its categories, every training
                         sample id and, for few-shot, the drawn shots (written first)
    state.safetensors    the method's ``state_dict`` (tensors only; safetensors, never pickle)
    fit.json             what the fit is (method, its full config, seed, setting, fit hash,
                         training data), its timings and status; written atomically and LAST,
                         so its presence with status ``ok`` means the state is complete
    log.txt, error.txt   the attempts' log and their tracebacks

``load_fitted(FIT_DIR)`` rebuilds the method from ``fit.json`` and restores ``state.safetensors``;
a cell does exactly that, so a cell computed right after its fit and one computed from a fit
of an earlier run predict the same.  Progress goes to ``progress.json`` in the task's folder
(stage, images done and total), where the driver reads it, or to the ``report`` callback.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

import baselines
import protocols
from baselines.base import Batch
from m2ad import data as m2ad_data
from m2ad import ownership
from m2ad.files import jsonable, write_json_atomic
from m2ad.metrics import all_finite
from m2ad.ownership import temp_file_name
from m2ad.predictions import PredictionsFile, PredictionsWriter, as_map_dtype
from m2ad.run.config import DEFAULT_PRO_LIMIT, RunError
from m2ad.run.plan import CellSpec, FitSpec
from m2ad.run.provenance import now, predictions_metadata
from m2ad.schema import DatasetInfo
from protocols.evaluate import evaluate_category

FIT_FILE = "fit.json"
STATE_FILE = "state.safetensors"
TRAINING_FILE = "training.json"
CELL_FILE = "cell.json"
PREDICTIONS_FILE = "predictions.parquet"
PROGRESS_FILE = "progress.json"
TASKS_LOCK_FILE = ".m2ad-tasks.lock"
"""In the run folder: held shared by every running fit and cell (never removed)."""
TEST_ORDER = ["specimen", "view", "illumination", "sample_id"]

Report = Callable[[str, int, int], None]
"""``report(stage, images done in this stage, images in this stage)``."""


def execute(spec: FitSpec | CellSpec, report: Report | None = None) -> dict[str, Any]:
    """Run a fit or a cell (the one function a Ray task runs), holding the run folder's
    :data:`TASKS_LOCK_FILE` shared, so that a later run can wait until no task of this one is left."""
    with ownership.shared_lock(spec.unit_dir.parent.parent / TASKS_LOCK_FILE):
        return execute_fit(spec, report) if isinstance(spec, FitSpec) else execute_cell(spec, report)


# --------------------------------------------------------------------------- fits


def execute_fit(spec: FitSpec, report: Report | None = None) -> dict[str, Any]:
    """Train the method on the fit's training samples, save its state, write ``fit.json`` last."""
    started = time.perf_counter()
    _seed_everything(spec.seed, spec.threads)
    _clear_stale(spec.unit_dir, FIT_FILE)
    report = report or ProgressFile(spec.unit_dir)
    selection = spec.selection
    write_json_atomic(spec.unit_dir / TRAINING_FILE, {
        "setting": spec.setting.name, "shots": spec.setting.shots, "shot_unit": selection.shot_unit, "drawn_shots": selection.shots,
        "seed": spec.seed, "train_data": str(spec.train_data), "train_data_identity": spec.train_data_identity,
        "categories": sorted(selection.frame["category"].unique().to_list()), "serves": list(selection.serves),
        "sample_ids": selection.frame["sample_id"].to_list(),
    })
    with _TaskLog(spec.unit_dir, spec.attempt) as note:
        note(f"fit {spec.method} ({spec.setting.name}) on {selection.frame.height} images of {selection.scope}, seed {spec.seed}, "
             f"host {socket.gethostname()}, gpus {_ray_gpu_ids()}")
        method = spec.method_class(spec.method_class.Config(**spec.method_config))
        train = TrainBatches(spec.train_data, selection.frame, spec.batch_size, spec.threads, report, spec.class_names,
                             spec.method_class.card.input_unit, extra_modalities(spec.method_class.card, spec.train_data))
        method.fit(train, spec.setting)
        save_state(method.state_dict(), spec.unit_dir / STATE_FILE, {"method": spec.method, "fit_hash": spec.fit_hash})
        fit_seconds = time.perf_counter() - started
        note(f"fitted in {fit_seconds:.2f} s ({train.passes} pass(es) over the training images)")
    record = {
        **fit_identity(spec), "status": "ok", "attempts": spec.attempt, "n_train": selection.frame.height, "passes": train.passes,
        "timings": {"fit_s": fit_seconds}, "host": socket.gethostname(), "gpu_ids": _ray_gpu_ids(), "finished": now(),
    }
    write_json_atomic(spec.unit_dir / FIT_FILE, record)
    (spec.unit_dir / PROGRESS_FILE).unlink(missing_ok=True)
    return record


def fit_identity(spec: FitSpec) -> dict[str, Any]:
    """What a fit is, as ``fit.json`` records it (enough to rebuild the method)."""
    return {
        "fit_id": spec.fit_id, "method": spec.method, "method_config": spec.method_config, "seed": spec.seed,
        "setting": spec.setting.name, "shots": spec.setting.shots, "scope": spec.selection.scope,
        "categories": sorted(spec.selection.frame["category"].unique().to_list()), "serves": list(spec.selection.serves),
        "train_data": str(spec.train_data), "train_data_identity": spec.train_data_identity, "fit_hash": spec.fit_hash,
    }


def save_state(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a method's ``state_dict`` with safetensors, atomically.  Tensors that share memory
    (safetensors refuses them) are stored as copies."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; a method's state must be tensors only")
        tensor = value.detach().cpu().contiguous()
        where = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        tensors[key] = tensor.clone() if where in seen and tensor.numel() else tensor
        seen.add(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temp_file_name(path)
    try:
        save_file(tensors, temporary, metadata=metadata)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def finished_fit(fit_dir: Path, expected_hash: str | None = None) -> dict[str, Any] | None:
    """The ``fit.json`` of a complete fit (with ``expected_hash`` if given), else None."""
    try:
        record = json.loads((fit_dir / FIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("status") != "ok" or not (fit_dir / STATE_FILE).is_file():
        return None
    if expected_hash is not None and record.get("fit_hash") != expected_hash:
        return None
    return record


def load_fitted(fit_dir: Path, expected_hash: str | None = None, method_class: type | None = None) -> tuple[Any, dict[str, Any]]:
    """The fitted method of ``fit_dir`` (rebuilt from ``fit.json``, state from
    ``state.safetensors``) and its ``fit.json`` record.  ``method_class`` defaults to the
    registry's class of the recorded method."""
    record = finished_fit(fit_dir, expected_hash)
    if record is None:
        raise RunError(f"{fit_dir} holds no finished fit{' with the expected hash' if expected_hash else ''} ({FIT_FILE} with status ok and {STATE_FILE})")
    method_class = method_class or baselines.method_class(record["method"])
    method = method_class(method_class.Config(**record["method_config"]))
    method.load_state_dict(load_file(fit_dir / STATE_FILE))
    return method, record


# --------------------------------------------------------------------------- cells


def execute_cell(spec: CellSpec, report: Report | None = None) -> dict[str, Any]:
    """Predict one category (from the saved fit, or training-free), write its predictions,
    evaluate them; write ``cell.json`` last and return it."""
    started = time.perf_counter()
    _seed_everything(spec.seed, spec.threads)
    _clear_stale(spec.cell_dir, CELL_FILE)
    report = report or ProgressFile(spec.cell_dir)
    with _TaskLog(spec.cell_dir, spec.attempt) as note:
        note(f"start {spec.method} on {spec.category}, seed {spec.seed}, host {socket.gethostname()}, gpus {_ray_gpu_ids()}")
        protocol = protocols.get(spec.protocol)
        manifest = m2ad_data.load_manifest(spec.data)
        test = protocol.test_samples(manifest, spec.category).sort(TEST_ORDER, nulls_last=True)
        if test.height == 0:
            raise RunError(f"protocol {spec.protocol!r} selects no test samples for {spec.category!r}")
        if spec.fit_dir is not None:
            method, fit = load_fitted(spec.fit_dir, spec.fit_hash, spec.method_class)
            note(f"loaded fit {spec.fit_id} ({fit['n_train']} training images)")
        else:
            method, fit = spec.method_class(spec.method_class.Config(**spec.method_config)), None

        # exact mode feeds the evaluator while predicting; the binned modes need the maps'
        # value range first, so they score the written file afterwards, in bounded memory
        evaluator = None
        if spec.mode == "exact":
            evaluator = protocol.new_evaluator(test, mask_rule=spec.mask_rule, pro_limit=DEFAULT_PRO_LIMIT)
        predict_started, predicted = time.perf_counter(), 0
        predictions_path = spec.cell_dir / PREDICTIONS_FILE
        names = {spec.category: spec.class_name or spec.category}
        with PredictionsWriter(predictions_path, map_dtype=spec.map_dtype, metadata=predictions_metadata(cell_identity(spec)),
                               map_kind=protocol.map_kind) as writer:
            loaded = m2ad_data.iter_batches(spec.data, test, batch_size=spec.batch_size, with_masks=evaluator is not None,
                                            mask_rule=spec.mask_rule, threads=spec.threads,
                                            extra_modalities=extra_modalities(spec.method_class.card, spec.data))
            for batch, masks in method_batches(loaded, names, spec.method_class.card.input_unit):
                scores, maps = checked_predictions(spec.method, batch, *method.predict(batch), spec.map_dtype)
                writer.write_batch(batch.sample_ids, scores, maps)
                if evaluator is not None:
                    evaluator.update(batch.sample_ids, scores, maps, masks)
                predicted += len(batch)
                report("predict", predicted, test.height)
        predict_seconds = time.perf_counter() - predict_started
        note(f"predicted {predicted} images in {predict_seconds:.2f} s")

        report("evaluate", 0, test.height)
        evaluate_started = time.perf_counter()
        if evaluator is None:
            with m2ad_data.ShardReader(spec.data, threads=spec.threads) as reader:
                evaluator = evaluate_category(protocol, test, PredictionsFile(predictions_path), reader, mode=spec.mode,
                                              mask_rule=spec.mask_rule, pro_limit=DEFAULT_PRO_LIMIT, with_maps=True)
        computed = evaluator.compute()
        evaluate_seconds = time.perf_counter() - evaluate_started
        metrics = {name: _as_float(computed.get(name)) for name in protocol.metric_names}
        counts, breakdown = evaluator.counts(), evaluator.breakdown()
        note(f"metrics {json.dumps(metrics)}")

    record = {
        **cell_identity(spec),
        "status": "ok",
        "attempts": spec.attempt,
        "metrics": metrics,
        "counts": counts,
        "breakdown": jsonable(breakdown),
        "n_train": fit["n_train"] if fit else 0,
        "n_test": predicted,
        "timings": {
            "fit_s": fit["timings"]["fit_s"] if fit else 0.0,
            "predict_s": predict_seconds,
            "evaluate_s": evaluate_seconds,
            "total_s": time.perf_counter() - started,
        },
        "host": socket.gethostname(),
        "gpu_ids": _ray_gpu_ids(),
        "finished": now(),
    }
    write_json_atomic(spec.cell_dir / CELL_FILE, record)
    (spec.cell_dir / PROGRESS_FILE).unlink(missing_ok=True)
    return record


def cell_identity(spec: CellSpec) -> dict[str, Any]:
    """What a cell is, as ``cell.json`` and its predictions file record it."""
    from m2ad.run.plan import protocol_version

    return {
        "cell_id": spec.cell_id, "method": spec.method, "method_config": spec.method_config, "category": spec.category,
        "seed": spec.seed, "protocol": spec.protocol, "protocol_version": protocol_version(spec.protocol),
        "setting": spec.setting.name, "shots": spec.setting.shots, "train_dataset": spec.train_dataset,
        "fit_id": spec.fit_id, "fit_hash": spec.fit_hash, "mode": spec.mode, "mask_rule": spec.mask_rule,
        "map_dtype": spec.map_dtype, "config_hash": spec.config_hash,
        "reimplemented_from": spec.method_class.card.reimplemented_from,
    }


def finished_cell(spec: CellSpec) -> dict[str, Any] | None:
    """The cell's record if it finished with the same config hash, else None."""
    try:
        record = json.loads((spec.cell_dir / CELL_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("status") == "ok" and record.get("config_hash") == spec.config_hash and (spec.cell_dir / PREDICTIONS_FILE).is_file():
        return record
    return None


def checked_predictions(method: str, batch: Batch, scores: Any, maps: Any, map_dtype: str
                        ) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
    """Scores (B,) float64 and maps (B, H, W) in ``map_dtype`` (for point clouds, a list of
    (N_i,) per-point scores), or a clear error naming the method.  The maps are converted
    once, here: the predictions file stores them as they are and the evaluator scores the very
    same values, so ``m2ad evaluate`` on the file agrees."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(batch),):
        raise ValueError(f"method {method!r} returned scores of shape {scores.shape}, expected ({len(batch)},)")
    if batch.points is not None:
        return scores, _checked_point_maps(method, batch, maps, map_dtype)
    maps = np.asarray(maps)
    assert batch.images is not None
    expected = (len(batch), *batch.images.shape[-2:])
    if maps.shape != expected:
        raise ValueError(f"method {method!r} returned maps of shape {maps.shape}, expected {expected}")
    converted = as_map_dtype(maps, map_dtype)
    # finite values that became inf overflowed float16 (NaN and inf the writer reports by sample id)
    if map_dtype == "float16" and converted.size and not all_finite(converted) and all_finite(maps):
        peak = max(float(maps.max()), -float(maps.min()))
        raise ValueError(
            f"method {method!r} returned map values up to {peak:.4g}, beyond float16; use --map-dtype float32 or rescale"
        )
    return scores, converted


def _checked_point_maps(method: str, batch: Batch, maps: Any, map_dtype: str) -> list[np.ndarray]:
    """Per-point scores, one (N_i,) array in ``map_dtype`` per cloud of ``batch``, or a clear error."""
    assert batch.points is not None
    if maps is None or len(maps) != len(batch):
        raise ValueError(f"method {method!r} returned {0 if maps is None else len(maps)} point score arrays for {len(batch)} clouds")
    converted = []
    for sample_id, cloud, values in zip(batch.sample_ids, batch.points, maps):
        values = np.asarray(values)
        if values.shape != (len(cloud),):
            raise ValueError(f"method {method!r} returned point scores of shape {values.shape} for {sample_id}, "
                             f"expected ({len(cloud)},): one score per point")
        stored = as_map_dtype(values.astype(np.float32, copy=False), map_dtype)
        if map_dtype == "float16" and not all_finite(stored) and all_finite(values):
            raise ValueError(f"method {method!r} returned point scores beyond float16; use --map-dtype float32 or rescale")
        converted.append(stored)
    return converted


# --------------------------------------------------------------------------- saved fits on new data


def predict_with_fit(
    fit_dir: Path,
    data: Path,
    out: Path,
    *,
    categories: list[str] | None = None,
    split: str = "test",
    batch_size: int = 32,
    map_dtype: str = "float16",
    report: Report | None = None,
) -> dict[str, Any]:
    """Score every ``split`` sample of ``data`` (of ``categories``; default: the categories the
    fit was trained for that ``data`` has, or all of them for a zero-shot fit) with the saved fit
    of ``fit_dir``, into the predictions file ``out``.  Returns what was written."""
    fit_dir, data = Path(fit_dir), Path(data)
    method, fit = load_fitted(fit_dir)
    info, manifest = DatasetInfo.read(data), m2ad_data.load_manifest(data)
    present = sorted(manifest.filter(pl.col("split") == split)["category"].unique().to_list())
    if categories is None:
        categories = present if fit["setting"] == "zero-shot" else [category for category in fit["serves"] if category in present]
    unknown = [category for category in categories if category not in present]
    if unknown or not categories:
        raise RunError(f"{data} has no {split} samples of {', '.join(unknown or fit['serves'])}; present: {', '.join(present) or 'none'}")
    _seed_everything(int(fit["seed"]), None)
    frame = manifest.filter((pl.col("split") == split) & pl.col("category").is_in(categories)).sort(["category", *TEST_ORDER], nulls_last=True)
    names = {category: info.class_names.get(category) or category for category in categories}
    metadata = predictions_metadata({"fit_id": fit["fit_id"], "fit_hash": fit["fit_hash"], "method": fit["method"],
                                     "method_config": fit["method_config"], "setting": fit["setting"], "shots": fit["shots"],
                                     "seed": fit["seed"], "categories": categories, "split": split,
                                     "reimplemented_from": type(method).card.reimplemented_from})
    done = 0
    map_kind = "point" if "points" in info.modalities else "pixel"
    with PredictionsWriter(out, map_dtype=map_dtype, metadata=metadata, map_kind=map_kind) as writer:
        loaded = m2ad_data.iter_batches(data, frame, batch_size=batch_size, extra_modalities=extra_modalities(type(method).card, data))
        for batch, _ in method_batches(loaded, names, type(method).card.input_unit):
            scores, maps = checked_predictions(fit["method"], batch, *method.predict(batch), map_dtype)
            writer.write_batch(batch.sample_ids, scores, maps)
            done += len(batch)
            if report:
                report("predict", done, frame.height)
    return {"predictions": str(out), "images": done, "categories": categories, "fit": fit["fit_id"]}


# --------------------------------------------------------------------------- batches and progress


class TrainBatches:
    """The training samples of a fit as a re-iterable of method batches (one pass per epoch);
    counts its passes and reports the images of the current one."""

    def __init__(self, root: Path, frame: pl.DataFrame, batch_size: int, threads: int | None, report: Report,
                 class_names: dict[str, str], input_unit: str, modalities: tuple[str, ...] = ()) -> None:
        self.root, self.frame, self.batch_size, self.threads, self.report = root, frame, batch_size, threads, report
        self.class_names, self.input_unit, self.modalities = class_names, input_unit, modalities
        self.passes = 0

    def __iter__(self) -> Iterator[Batch]:
        self.passes += 1
        done = 0
        loaded = m2ad_data.iter_batches(self.root, self.frame, batch_size=self.batch_size, threads=self.threads,
                                        extra_modalities=self.modalities)
        for batch, _ in method_batches(loaded, self.class_names, self.input_unit):
            yield batch
            done += len(batch)
            self.report(f"fit, pass {self.passes}", done, self.frame.height)


def extra_modalities(card: Any, data: Path) -> tuple[str, ...]:
    """The modalities besides the primary one and the masks that a method's card reads (the
    parts of its ``inputs``, e.g. ``xyz`` of ``image+xyz``) and the data at ``data`` has: what
    the runner decodes into ``Batch.modalities``."""
    wanted = {part for inputs in card.inputs for part in inputs.split("+")}
    return tuple(name for name in DatasetInfo.read(data).modalities if name in wanted and name not in ("image", "points", "mask"))


def method_batches(loaded: Iterable[m2ad_data.LoadedBatch], class_names: dict[str, str], input_unit: str
                   ) -> Iterator[tuple[Batch, np.ndarray | None]]:
    """The method's view of data batches (images and metadata, never masks or labels), with
    the masks kept apart for the evaluator.  For a group input unit (``view``: the lights of
    one specimen's view; ``specimen``), batches are cut at group boundaries only, so a group is
    never split (a batch may then exceed the batch size by less than a group)."""
    if input_unit == "image":
        for data_batch in loaded:
            yield _method_batch(data_batch, class_names), data_batch.ground_truth
        return
    columns = ["specimen", "view"] if input_unit == "view" else ["specimen"]
    held: list[tuple[Batch, np.ndarray | None]] = []  # the rows of the group still open
    open_group: tuple[Any, ...] | None = None
    for data_batch in loaded:
        batch = _method_batch(data_batch, class_names)
        truth = data_batch.ground_truth
        keys = list(zip(*(data_batch.frame[column].to_list() for column in columns), strict=True))
        if held and keys[0] != open_group:
            yield _join(held)
            held = []
        cut = next((index for index in range(len(keys) - 1, 0, -1) if keys[index] != keys[index - 1]), 0)
        if cut:
            held.append(_slice(batch, truth, 0, cut))
            yield _join(held)
            held = [_slice(batch, truth, cut, len(batch))]
        else:  # the whole batch is one group, which may go on in the next batch
            held.append((batch, truth))
        open_group = keys[-1]
    if held:
        yield _join(held)


def _method_batch(data_batch: m2ad_data.LoadedBatch, class_names: dict[str, str]) -> Batch:
    categories = list(data_batch.categories)
    return Batch(
        sample_ids=list(data_batch.sample_ids),
        images=data_batch.images,
        categories=categories,
        views=list(data_batch.views),
        illuminations=list(data_batch.illuminations),
        class_names=[class_names.get(category, category) for category in categories],
        specimens=data_batch.frame["specimen"].to_list(),
        points=data_batch.points,
        modalities={name: torch.from_numpy(array) for name, array in data_batch.modalities.items()},
    )


GroundTruth = np.ndarray | list[np.ndarray] | None
"""Masks (B, H, W), or the per-point labels of a point-cloud batch (a list), or None."""


def _slice(batch: Batch, masks: GroundTruth, start: int, stop: int) -> tuple[Batch, GroundTruth]:
    part = Batch(batch.sample_ids[start:stop], None if batch.images is None else batch.images[start:stop], batch.categories[start:stop],
                 batch.views[start:stop], batch.illuminations[start:stop], batch.class_names[start:stop], batch.specimens[start:stop],
                 {name: tensor[start:stop] for name, tensor in batch.modalities.items()},
                 None if batch.points is None else batch.points[start:stop])
    return part, None if masks is None else masks[start:stop]


def _join(parts: list[tuple[Batch, GroundTruth]]) -> tuple[Batch, GroundTruth]:
    if len(parts) == 1:
        return parts[0]
    batches = [batch for batch, _ in parts]

    def joined(name: str) -> list[Any]:
        return [item for batch in batches for item in getattr(batch, name)]

    images = None if batches[0].images is None else torch.cat([b.images for b in batches])
    points = None if batches[0].points is None else joined("points")
    batch = Batch(joined("sample_ids"), images, joined("categories"), joined("views"),
                  joined("illuminations"), joined("class_names"), joined("specimens"),
                  {name: torch.cat([b.modalities[name] for b in batches]) for name in batches[0].modalities}, points)
    if parts[0][1] is None:
        return batch, None
    if isinstance(parts[0][1], list):
        return batch, [labels for _, part in parts for labels in part]  # type: ignore[union-attr]
    return batch, np.concatenate([masks for _, masks in parts])


class ProgressFile:
    """Progress of a task running on a Ray worker, in ``progress.json`` for the driver to read:
    written at most twice a second, and at once when the stage changes."""

    def __init__(self, unit_dir: Path) -> None:
        self.path = unit_dir / PROGRESS_FILE
        self.stage = ""
        self.last_write = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now_s = time.monotonic()
        if stage != self.stage or now_s - self.last_write >= 0.5:
            write_json_atomic(self.path, {"stage": stage, "done": done, "total": total})
            self.stage, self.last_write = stage, now_s


class _TaskLog:
    """``log.txt`` of a task folder, opened for appending; calling it writes a timestamped line."""

    def __init__(self, unit_dir: Path, attempt: int) -> None:
        self.path, self.attempt = unit_dir / "log.txt", attempt

    def __enter__(self) -> Callable[[str], None]:
        self.file = open(self.path, "a")  # noqa: SIM115 (closed in __exit__)

        def note(message: str) -> None:
            self.file.write(f"{now()} attempt {self.attempt}: {message}\n")
            self.file.flush()

        return note

    def __exit__(self, *exc_info: object) -> None:
        self.file.close()


def _seed_everything(seed: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _clear_stale(unit_dir: Path, record_file: str) -> None:
    """Remove what an earlier, different or interrupted computation of the task left: its
    record (so that a half-recomputed task never looks finished) and temporary files."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    (unit_dir / record_file).unlink(missing_ok=True)
    for leftover in [*unit_dir.glob(".*.tmp"), *unit_dir.glob(".*.partial")]:
        leftover.unlink(missing_ok=True)


def _ray_gpu_ids() -> list[Any]:
    """The GPUs Ray gave this task ([] outside Ray)."""
    if "ray" not in sys.modules:
        return []
    import ray

    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def _as_float(value: Any) -> float | None:
    """A metric value as a float, None when undefined (None or NaN)."""
    return None if value is None or not np.isfinite(value) else float(value)
