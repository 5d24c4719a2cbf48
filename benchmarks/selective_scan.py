"""Speed of VarAD's selective scans (forward + backward), as ratios to the per-step pure scan
(``chunk_size=1``) measured in the same run on the same inputs: the chunked pure scan at several
chunk sizes and, when ``mamba_ssm`` imports and CUDA is there, its CUDA kernel.  Each line also
gives the largest absolute difference of its output from the per-step scan.

    python benchmarks/selective_scan.py                       # auto device, VarAD-tiny-like sizes
    python benchmarks/selective_scan.py --length 1024 --dim 768 --batch 32 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# run as a script, this file's folder comes first on sys.path and its name would hide the module
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
from baselines.selective_scan import load_kernel, selective_scan  # noqa: E402


def seconds(run: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` forward + backward passes, and the output of the last one."""
    best, output = float("inf"), torch.empty(0)
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = run()
        output.square().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, output.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch", type=int, default=32, help="sequences (images x directions)")
    parser.add_argument("--dim", type=int, default=80, help="inner width (expand x model width)")
    parser.add_argument("--state", type=int, default=16, help="state size N")
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--chunks", default="4,16", help="chunk sizes of the chunked pure scan")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    generator = torch.Generator().manual_seed(0)
    shapes = ((args.batch, args.dim, args.length),) * 2 + ((args.dim, args.state),) + ((args.batch, args.state, args.length),) * 2
    u, delta, A, B, C = (torch.randn(shape, generator=generator) for shape in shapes)
    A = -A.abs()
    D, bias, z = torch.randn(args.dim, generator=generator), torch.randn(args.dim, generator=generator), torch.randn(args.batch, args.dim, args.length, generator=generator)
    tensors = [t.to(device).requires_grad_(True) for t in (u, delta, A, B, C, D, z, bias)]

    def scan(function: Callable[..., torch.Tensor], **extra: int) -> Callable[[], torch.Tensor]:
        u, delta, A, B, C, D, z, bias = tensors
        return lambda: function(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, **extra)

    reference, expected = seconds(scan(selective_scan, chunk_size=1), device, args.repeats)
    print(f"{device.type}: batch {args.batch}, dim {args.dim}, state {args.state}, length {args.length}")
    print(f"per-step pure scan: {reference * 1e3:.1f} ms (the reference)")
    for chunk in (int(part) for part in args.chunks.split(",") if part.strip()):
        took, output = seconds(scan(selective_scan, chunk_size=chunk), device, args.repeats)
        print(f"chunked pure scan, chunk {chunk}: {took * 1e3:.1f} ms, {took / reference:.2f} x the reference, max abs diff {float((output - expected).abs().max()):.2e}")
    kernel = load_kernel() if device.type == "cuda" else None
    if kernel is None:
        print("mamba_ssm kernel: not measured (needs the mamba_ssm package and a CUDA device)")
        return
    took, output = seconds(scan(kernel), device, args.repeats)
    print(f"mamba_ssm kernel: {took * 1e3:.1f} ms, {took / reference:.2f} x the reference, max abs diff {float((output - expected).abs().max()):.2e}")


if __name__ == "__main__":
    main()
