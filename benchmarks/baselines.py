"""Predict throughput of the trained baselines (images/s): ours (SDPA attention, bf16 autocast on
CUDA) against a plain eager-PyTorch reference of the same network (explicit softmax attention,
float32, no autocast), measured in the same run on the same weights and images.

On CUDA the default is the official geometry (ViT-B/14 reg4, 392 x 392 crops, batch 16); on CPU a
tiny configuration (40-wide, 4-head, 4-block encoder, 112 px, batch 4), where both variants are
float32 and the ratio reflects SDPA only.  Weights are random: throughput does not depend on them.
CDO (CNN, no attention) runs its HRNet-W32 expert and apprentice at 256 px on CUDA (112 on CPU)
against an eager float32 reference that calls the two networks and computes the official map
with plain tensor operations and SciPy's Gaussian.
MSFlow has no attention: its fast variant is bf16 autocast of the CNN encoder on CUDA (flows and
maps stay float32), WRN-50-2 on CUDA and EfficientNet-Lite0 on CPU, so on CPU both are the same
eager float32 network and the ratio measures only run-to-run noise.

    python benchmarks/baselines.py                      # every method, auto device
    python benchmarks/baselines.py --method dinomaly --device cpu --steps 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# run as a script, this file's folder comes first on sys.path and its name would hide the package
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
import baselines  # noqa: E402
from baselines.backbones.dinov2 import set_sdpa  # noqa: E402
from baselines.backbones import registry  # noqa: E402
from baselines.reconstruction import normalize  # noqa: E402

METHODS = ("cdo", "dinomaly", "inpformer", "msflow")


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(name: str, device: str, encoder: str, size: int) -> tuple[object, torch.nn.Module]:
    """The method (random-weight encoder) and a fresh model of it."""
    if name == "msflow":
        backbone = "wide_resnet50_2" if device == "cuda" else "efficientnet_lite0"
        method = baselines.create(name, backbone=backbone, backbone_weights="random", input_size=size, device=device, seed=0)
        return method, method.new_model().eval()
    common = {"encoder": encoder, "encoder_weights": "random", "input_size": size, "crop_size": size, "map_size": size, "device": device, "seed": 0}
    method = baselines.create(name, **common)
    model = method.new_model() if name == "dinomaly" else method._new_model()
    return method, model.eval()


def rate(model: torch.nn.Module, images: torch.Tensor, batch: int, steps: int, fast: bool, device: torch.device) -> float:
    """Images/s of ``model.predict`` over ``steps`` batches, ``fast`` = SDPA + bf16 autocast."""
    set_sdpa(model, fast)
    model.mixed_precision = fast
    model.predict(normalize(images[:batch].to(device)))  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    for step in range(steps):
        model.predict(normalize(images[step * batch : (step + 1) * batch].to(device)))
    _synchronize(device)
    return batch * steps / (time.perf_counter() - start)


@torch.no_grad()
def eager_cdo_predict(expert: torch.nn.Module, apprentice: torch.nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Plain float32 CDO prediction (official map): three levels of both networks, resized to
    the first grid, squared distance of unit vectors, bilinear to the input, summed, Gaussian sigma 4, maximum."""
    size = images.shape[-2:]
    expert_levels = expert.features(images, ("stride4", "stride8", "stride16"))
    apprentice_levels = apprentice.features(images, ("stride4", "stride8", "stride16"))
    total = 0
    for name, target in expert_levels.items():
        grid = expert_levels["stride4"].shape[-2:]
        target = F.interpolate(target, size=grid, mode="bilinear", align_corners=True)
        output = F.interpolate(apprentice_levels[name], size=grid, mode="bilinear", align_corners=True)
        target = target / target.norm(dim=1, keepdim=True).clamp_min(1e-12)
        output = output / output.norm(dim=1, keepdim=True).clamp_min(1e-12)
        total = total + F.interpolate(((target - output) ** 2).sum(1, keepdim=True), size=size, mode="bilinear", align_corners=False)
    maps = np.stack([ndimage.gaussian_filter(item, sigma=4) for item in total[:, 0].cpu().numpy()])
    return maps.reshape(len(maps), -1).max(1), maps


def cdo_rates(device: torch.device, size: int, batch: int, steps: int, rounds: int = 3) -> tuple[float, float]:
    """Images/s of ``CDOModel.predict`` (bf16 autocast on CUDA) and of ``eager_cdo_predict`` on
    the same HRNet-W32 weights and images; the two alternate ``rounds`` times and the best of
    each is kept, so that a shared machine's load hits both alike."""
    method = baselines.create("cdo", expert_weights="random", input_size=size, device=device.type, seed=0)
    model = method.new_model().eval()
    images = torch.randint(0, 256, (batch * steps, 3, size, size), dtype=torch.uint8)

    def run(fast: bool) -> float:
        model.mixed_precision = fast
        predict = model.predict if fast else lambda inputs: eager_cdo_predict(model.expert, model.apprentice, inputs)
        _synchronize(device)
        start = time.perf_counter()
        for step in range(steps):
            predict(registry.normalize(images[step * batch : (step + 1) * batch].to(device), "hrnet32"))
        _synchronize(device)
        return batch * steps / (time.perf_counter() - start)

    run(True), run(False)  # warm-up
    best = {True: 0.0, False: 0.0}
    for _ in range(rounds):
        for fast in (True, False):
            best[fast] = max(best[fast], run(fast))
    return best[True], best[False]


def main() -> None:
    """Parse options, measure each method both ways, print images/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, action="append", help="method to measure (repeat; default: all)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--encoder", default=None, help="vits14, vitb14, vitl14 or tiny (default: vitb14 on CUDA, tiny on CPU)")
    parser.add_argument("--size", type=int, default=None, help="crop size in pixels (default: 392 on CUDA, 112 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 16 on CUDA, 4 on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed batches per measurement")
    args = parser.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    encoder = args.encoder or ("vitb14" if cuda else "tiny")
    size = args.size or (392 if cuda else 112)
    batch = args.batch or (16 if cuda else 4)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (batch * args.steps, 3, size, size), dtype=torch.uint8)
    print(f"device {device}, encoder {encoder}, {size} px, batch {batch}, {args.steps} steps, torch threads {torch.get_num_threads()}")
    print(f"{'method':10s} {'ours img/s':>11s} {'eager img/s':>12s} {'ratio':>6s}")
    for name in args.method or METHODS:
        if name == "cdo":
            ours, eager = cdo_rates(device, args.size or (256 if cuda else 112), batch, args.steps)
            print(f"{name:10s} {ours:11.2f} {eager:12.2f} {ours / eager:6.2f}")
            continue
        _, model = build(name, device.type, encoder, size)
        eager = rate(model, images, batch, args.steps, False, device)
        ours = rate(model, images, batch, args.steps, True, device)
        print(f"{name:10s} {ours:11.2f} {eager:12.2f} {ours / eager:6.2f}")


if __name__ == "__main__":
    main()
