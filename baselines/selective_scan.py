"""Mamba's selective scan (Gu & Dao, arXiv 2312.00752, Algorithm 2) and the Mamba block around it.

The scan is the input-dependent linear recurrence, per channel d and state n::

    delta_t = softplus(delta_t + delta_bias)            (when ``delta_softplus``)
    h_t     = exp(delta_t A) * h_{t-1} + delta_t B_t u_t
    y_t     = <C_t, h_t> + D u_t,  then y_t * silu(z_t)  (when ``z`` is given)

``selective_scan`` computes it exactly in plain PyTorch (any device, autograd) with the argument
order and shapes of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``; ``scan_function``
picks that CUDA kernel instead only when the ``mamba_ssm`` package imports and the tensors are on
a CUDA device (``pip install m2ad[mamba]``; never required).

The pure scan works in chunks of ``chunk_size`` steps: inside a chunk, with S_t the running sum
of delta A, ``h_t = exp(S_t) h_0 + sum_{s<=t} exp(S_t - S_s) delta_s B_s u_s``, where every
exponent is <= 0 (A < 0, delta > 0), so nothing overflows, and S_t - S_s is summed from its own
terms (``segment_sums``, as Mamba-2's ``ssd_minimal.segsum``), not as a difference; the state is
carried from chunk to chunk.  ``chunk_size=1`` (the default) is the per-step recurrence, the
fastest on CPUs (the chunks' T x T pair weights cost more than the steps they save there); larger
chunks mean fewer sequential steps, meant for accelerators without the kernel (not measured on
one yet: ``benchmarks/selective_scan.py``).

``MambaBlock`` is the mixer of ``mamba_ssm/modules/mamba_simple.py`` (``Mamba``, read at
``state-spaces/mamba`` ``e9594ce``): in_proj -> causal depthwise conv1d -> SiLU -> x_proj
(dt, B, C) -> dt_proj -> selective scan gated by SiLU(z) -> out_proj, with its initialisation
(dt bias = softplus^-1 of a log-uniform draw in [dt_min, dt_max], S4D-real A, D = 1).  Every
operation is causal: output t depends on inputs 0..t only.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

SCAN_MODES = ("auto", "pure", "kernel")
"""``auto``: the CUDA kernel when available for the tensors' device, else the pure scan;
``pure``: always the pure scan; ``kernel``: the kernel or a one-line error."""

ScanFn = Callable[..., torch.Tensor]


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = False, return_last_state: bool = False, initial_state: torch.Tensor | None = None,
                   chunk_size: int = 1) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The exact selective scan.  Shapes: ``u``, ``delta``, ``z`` (batch, dim, L); ``A`` (dim, N);
    ``B``, ``C`` (batch, N, L); ``D``, ``delta_bias`` (dim,); ``initial_state`` (batch, dim, N).
    Returns y (batch, dim, L), and the last state (batch, dim, N) with ``return_last_state``.
    Computed in float32 at least (float64 stays float64); y comes back in ``u``'s dtype."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    with torch.autocast(device_type=u.device.type, enabled=False):  # the exponents stay in float32 under bf16 autocast
        return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state, chunk_size)


def _scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None,
          z: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool, return_last_state: bool,
          initial_state: torch.Tensor | None, chunk_size: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.promote_types(u.dtype, torch.float32)
    batch, dim, _ = u.shape
    state_size = A.shape[1]
    x, dt = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    a, b, c = A.to(dtype), B.to(dtype), C.to(dtype)
    state = torch.zeros(batch, dim, state_size, dtype=dtype, device=u.device) if initial_state is None else initial_state.to(dtype)
    if chunk_size == 1:
        decay = torch.exp(torch.einsum("bdl,dn->bdln", dt, a))  # exp(delta_t A)
        drive = torch.einsum("bdl,bnl->bdln", dt * x, b)  # delta_t B_t u_t
        outputs = []
        for step_decay, step_drive, step_c in zip(decay.unbind(2), drive.unbind(2), c.unbind(2), strict=True):  # unbind: one backward, not L
            state = step_decay * state + step_drive
            outputs.append((state * step_c.unsqueeze(1)).sum(dim=-1))
        y = torch.stack(outputs, dim=2) if outputs else x.new_zeros(batch, dim, 0)
        return _finish(y, x, D, z, u.dtype, state, return_last_state)
    outputs = []
    chunks = zip(*(tensor.split(chunk_size, dim=2) for tensor in (dt, x, b, c)), strict=True)  # split: one backward, not one per chunk
    for dt_chunk, x_chunk, b_chunk, c_chunk in chunks:  # (batch, dim or N, T)
        step_decay = torch.einsum("bdt,dn->bdnt", dt_chunk, a)  # delta_t A, (batch, dim, N, T)
        drive = torch.einsum("bdt,bnt->bdnt", dt_chunk * x_chunk, b_chunk)  # delta_s B_s u_s
        weights = torch.exp(segment_sums(step_decay))  # exp(S_t - S_s), 0 for s > t: (batch, dim, N, T_t, T_s)
        states = torch.exp(step_decay.cumsum(dim=-1)) * state.unsqueeze(-1) + torch.einsum("bdnts,bdns->bdnt", weights, drive)
        outputs.append(torch.einsum("bdnt,bnt->bdt", states, c_chunk))
        state = states[..., -1]
    y = torch.cat(outputs, dim=2) if outputs else x.new_zeros(batch, dim, 0)
    return _finish(y, x, D, z, u.dtype, state, return_last_state)


def _finish(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, dtype: torch.dtype, state: torch.Tensor,
            return_last_state: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The skip term, the gate and the output dtype."""
    if D is not None:
        y = y + x * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    y = y.to(dtype)
    return (y, state) if return_last_state else y


def segment_sums(values: torch.Tensor) -> torch.Tensor:
    """``out[..., t, s] = values[..., s+1] + ... + values[..., t]`` for s <= t (0 on the diagonal),
    ``-inf`` above it: (..., T) -> (..., T, T).  Each entry sums its own terms, so no difference of
    two long running sums cancels digits away."""
    steps = values.shape[-1]
    ones = torch.ones(steps, steps, dtype=torch.bool, device=values.device)
    terms = values.unsqueeze(-1).expand(*values.shape, steps).masked_fill(~ones.tril(-1), 0.0)  # [k, s]: values_k where k > s
    return terms.cumsum(dim=-2).masked_fill(~ones.tril(), -math.inf)


def load_kernel() -> ScanFn | None:
    """``mamba_ssm``'s CUDA ``selective_scan_fn``, or ``None`` when the package does not import or
    imported without its compiled extension (recent versions then keep ``selective_scan_cuda =
    None`` and fail only when called)."""
    try:
        module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception:  # noqa: BLE001 (a missing package, a missing CUDA library, a broken build: all mean "no kernel")
        return None
    if getattr(module, "selective_scan_cuda", True) is None:
        return None
    return getattr(module, "selective_scan_fn", None)


def scan_function(mode: str, device: torch.device) -> tuple[ScanFn, str]:
    """The scan to use for tensors on ``device`` and its name (``kernel`` or ``pure``)."""
    if mode not in SCAN_MODES:
        raise ValueError(f"scan must be one of {', '.join(SCAN_MODES)}, got {mode!r}")
    if mode == "pure":
        return selective_scan, "pure"
    kernel = load_kernel() if device.type == "cuda" else None
    if kernel is not None:
        return kernel, "kernel"
    if mode == "kernel":
        why = "the tensors are not on a CUDA device" if device.type != "cuda" else "the mamba_ssm package does not import (pip install m2ad[mamba])"
        raise ValueError(f"scan=kernel needs mamba_ssm's CUDA kernel, but {why}; use scan=auto or scan=pure")
    return selective_scan, "pure"


class MambaBlock(nn.Module):
    """The Mamba mixer (B, L, d_model) -> (B, L, d_model); see the module docstring."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int = 0,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, scan: str = "auto", chunk_size: int = 1) -> None:
        super().__init__()
        if scan not in SCAN_MODES:
            raise ValueError(f"scan must be one of {', '.join(SCAN_MODES)}, got {scan!r}")
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.scan, self.chunk_size = scan, chunk_size
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.last_scan = ""
        """``kernel`` or ``pure``: which scan the last forward pass ran."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model), causal along L."""
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :length])
        dt, b, c = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)
        scan, self.last_scan = scan_function(self.scan, hidden.device)
        extra = {"chunk_size": self.chunk_size} if scan is selective_scan else {}
        y = scan(x.contiguous(), delta.contiguous(), -torch.exp(self.A_log.float()), b.transpose(1, 2).contiguous(),
                 c.transpose(1, 2).contiguous(), self.D.float(), z=z.contiguous(), delta_bias=self.dt_proj.bias.float(),
                 delta_softplus=True, **extra)
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))


__all__ = ["SCAN_MODES", "MambaBlock", "load_kernel", "scan_function", "segment_sums", "selective_scan"]
