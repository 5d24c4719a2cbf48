"""INP-Former training and inference throughput: ours (bf16 autocast + SDPA on CUDA) against eager
float32 of the same model (explicit softmax attention, no autocast), measured in the same run.

On CUDA the default is the official setting: ViT-B/14 reg4, 392 x 392 crops, batch 16.  On CPU
a tiny configuration runs instead (40-wide, 4-head, 4-block encoder, 56 px, batch 4), where
both variants are float32 and the ratio only reflects SDPA.  Weights are random: throughput
does not depend on them.

    python benchmarks/inpformer.py                 # auto: CUDA if available, else CPU tiny
    python benchmarks/inpformer.py --device cpu --steps 3
"""

from __future__ import annotations

import argparse
import time

import torch

from baselines.backbones.dinov2 import set_sdpa
from baselines.inpformer import INPFormer, INPFormerConfig, INPFormerModel, normalize


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(method: INPFormer, fast: bool, size: int, batch: int, steps: int) -> tuple[float, float]:
    """(training images/s, inference images/s) of a fresh model, ``fast`` = bf16 + SDPA."""
    torch.manual_seed(0)
    model: INPFormerModel = method._new_model()
    set_sdpa(model, fast)
    model.mixed_precision = fast
    device = method.device
    images = torch.randint(0, 256, (batch * steps, 3, size, size), dtype=torch.uint8)
    method.train_model(model, images[:batch])  # warm-up: allocations, kernels
    _synchronize(device)
    start = time.perf_counter()
    method.train_model(model, images)
    _synchronize(device)
    train_rate = batch * steps / (time.perf_counter() - start)
    model.predict(normalize(images[:batch].to(device)))
    _synchronize(device)
    start = time.perf_counter()
    for step in range(steps):
        model.predict(normalize(images[step * batch : (step + 1) * batch].to(device)))
    _synchronize(device)
    return train_rate, batch * steps / (time.perf_counter() - start)


def main() -> None:
    """Parse options, measure both variants, print images/s and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--encoder", default=None, help="vits14, vitb14, vitl14 or tiny (default: vitb14 on CUDA, tiny on CPU)")
    parser.add_argument("--size", type=int, default=None, help="crop size in pixels (default: 392 on CUDA, 56 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 16 on CUDA, 4 on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    encoder = args.encoder or ("vitb14" if cuda else "tiny")
    size = args.size or (392 if cuda else 56)
    batch = args.batch or (16 if cuda else 4)
    config = INPFormerConfig(
        encoder=encoder, encoder_weights="random", input_size=size, crop_size=size, epochs=1, batch_size=batch, warmup_iters=0, device="cuda" if cuda else "cpu"
    )
    method = INPFormer(config)
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"INP-Former {encoder}, {size} px, batch {batch}, {args.steps} steps x {args.rounds} rounds, on {device_name}, torch {torch.__version__}")
    # alternate the variants and keep each one's best round: robust to a shared, noisy machine
    rounds = [(measure(method, False, size, batch, args.steps), measure(method, True, size, batch, args.steps)) for _ in range(args.rounds)]
    eager = tuple(max(values) for values in zip(*(pair[0] for pair in rounds), strict=True))
    ours = tuple(max(values) for values in zip(*(pair[1] for pair in rounds), strict=True))
    label = "bf16 + SDPA" if cuda else "SDPA (fp32)"
    print(f"{'':24}{'train img/s':>14}{'infer img/s':>14}")
    print(f"{'eager fp32':24}{eager[0]:>14.2f}{eager[1]:>14.2f}")
    print(f"{'ours: ' + label:24}{ours[0]:>14.2f}{ours[1]:>14.2f}")
    print(f"{'speed-up':24}{ours[0] / eager[0]:>13.2f}x{ours[1] / eager[1]:>13.2f}x")


if __name__ == "__main__":
    main()
