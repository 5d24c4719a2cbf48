"""One training loop for "frozen encoder + trained head" methods (INP-Former, Dinomaly, ...).

``Recipe`` holds what the papers' and the M2AD code's recipes vary: optimiser (StableAdamW,
Adam, AdamW), learning-rate schedule (linear warm-up + cosine, a x0.1 step, or an exponential
decay per epoch), gradient-norm
clipping, batch size, ``drop_last``, and the length in epochs or in iterations.  ``train_head``
runs it: per iteration it sets the learning rate, draws the batch (a seeded permutation per
epoch), computes the method's loss under bf16 autocast on CUDA (float32 on CPU), steps and
records the loss.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

OPTIMIZERS = ("stableadamw", "adam", "adamw")
SCHEDULES = ("warm-cosine", "step", "exponential", "constant")


@dataclass(frozen=True)
class Recipe:
    """A training recipe.  Length: ``iterations`` when set (the loader is cycled epoch after
    epoch until then, as Dinomaly's scripts), else ``epochs`` passes."""

    optimizer: str = "stableadamw"
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    amsgrad: bool = False
    schedule: str = "warm-cosine"
    """``warm-cosine``: linear 0 -> ``lr`` over ``warmup_iters``, cosine to ``final_lr`` at the
    last iteration; ``step``: ``lr``, x0.1 from epoch ``step_epoch`` on; ``exponential``:
    ``lr * epoch_decay ** epoch`` (``torch.optim.lr_scheduler.ExponentialLR`` stepped per epoch);
    ``constant``."""
    epoch_decay: float = 0.95
    """Factor per epoch of the ``exponential`` schedule."""
    final_lr: float = 0.0
    warmup_iters: int = 0
    step_epoch: int = 0
    grad_clip: float | None = None
    batch_size: int = 16
    drop_last: bool = True
    epochs: int = 1
    iterations: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if len(self.betas) != 2:
            raise ValueError(f"betas needs two values, got {self.betas}")
        if min(self.batch_size, self.epochs) < 1 or (self.iterations is not None and self.iterations < 1):
            raise ValueError("batch_size, epochs and iterations must be positive")

    def build_optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        """The recipe's optimiser over ``params`` (one group, one weight decay for all)."""
        betas = (float(self.betas[0]), float(self.betas[1]))
        if self.optimizer == "stableadamw":
            return StableAdamW(params, lr=self.lr, betas=betas, weight_decay=self.weight_decay, amsgrad=self.amsgrad, eps=self.eps)
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, betas=betas, weight_decay=self.weight_decay, eps=self.eps, amsgrad=self.amsgrad)

    def lr_at(self, iteration: int, epoch: int, total: int) -> float:
        """Learning rate of ``iteration`` (0-based) in ``epoch`` of a ``total``-iteration run."""
        if self.schedule == "warm-cosine":
            return warm_cosine_lr(iteration, self.lr, self.final_lr, total, self.warmup_iters)
        if self.schedule == "step":
            return self.lr * (0.1 if self.step_epoch and epoch >= self.step_epoch else 1.0)
        if self.schedule == "exponential":
            return self.lr * self.epoch_decay**epoch
        return self.lr


def warm_cosine_lr(iteration: int, base: float, final: float, total: int, warmup: int) -> float:
    """The ``WarmCosineScheduler`` of the INP-Former and Dinomaly code at ``iteration``
    (0-based): linear from 0 to ``base`` over ``warmup`` iterations (``np.linspace``), cosine to
    ``final`` at ``total``, ``final`` afterwards."""
    if iteration >= total:
        return final
    if iteration < warmup:
        return float(np.linspace(0.0, base, warmup)[iteration])
    span = total - warmup
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * (iteration - warmup) / span))


class StableAdamW(torch.optim.Optimizer):
    """AdamW with an update-RMS clip, as ``optimizers/StableAdamW.py`` of INP-Former and Dinomaly.

    Weight decay is decoupled (``p *= 1 - lr * wd``); with ``amsgrad`` the running maximum of the
    second moment normalises the step; the step size is divided by max(1, RMS(grad / denom) /
    ``clip_threshold``).
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, clip_threshold: float = 1.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad, "clip_threshold": clip_threshold})

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # noqa: D102 (documented on the class)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                param.mul_(1 - group["lr"] * group["weight_decay"])
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                correction1 = 1 - beta1 ** state["step"]
                correction2 = 1 - beta2 ** state["step"]
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                second = state["exp_avg_sq"]
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                denom = (second.sqrt() / math.sqrt(correction2)).add_(group["eps"])
                ratio = grad / denom
                rms = float(ratio.norm(2) / ratio.numel() ** 0.5)
                step_size = group["lr"] / correction1 / max(1.0, rms / group["clip_threshold"])
                param.addcdiv_(state["exp_avg"], denom, value=-step_size)


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast on CUDA when ``enabled``, a disabled context elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


LossFn = Callable[[torch.Tensor, int], torch.Tensor]
"""``loss(inputs, iteration)``: the method's forward pass and loss on one batch."""


def train_head(
    params: Sequence[nn.Parameter],
    images: torch.Tensor,
    loss_fn: LossFn,
    recipe: Recipe,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    seed: int,
    mixed_precision: bool = True,
    name: str = "train",
) -> list[float]:
    """Train ``params`` (the head; the frozen encoder has none) on ``images`` with ``recipe``;
    returns the loss of each iteration.

    ``images`` stay on the CPU (uint8 crops or float tensors); each batch is moved to ``device``
    and turned into model inputs by ``prepare``.  Batches shrink to the image count when there
    are fewer images than ``batch_size`` (the original loaders would run no step at all).
    """
    if len(images) == 0:
        raise ValueError(f"{name}: no training images")
    optimizer = recipe.build_optimizer(params)
    batch_size = min(recipe.batch_size, len(images))
    per_epoch = len(images) // batch_size if recipe.drop_last else math.ceil(len(images) / batch_size)
    total = recipe.iterations if recipe.iterations is not None else recipe.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    iteration = 0
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for step in range(per_epoch):
            if iteration == total:
                break
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr_at(iteration, epoch, total)
            batch = prepare(images[order[step * batch_size : (step + 1) * batch_size]].to(device))
            with autocast(device, mixed_precision):
                loss = loss_fn(batch, iteration)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, max_norm=recipe.grad_clip)
            optimizer.step()
            losses.append(loss.detach().item())
            iteration += 1
        logger.info("%s: epoch %d/%d, iteration %d/%d, loss %.4f", name, epoch + 1, epochs, iteration, total, float(np.mean(losses[-per_epoch:])))
    return losses


__all__ = ["OPTIMIZERS", "SCHEDULES", "LossFn", "Recipe", "StableAdamW", "autocast", "train_head", "warm_cosine_lr"]
