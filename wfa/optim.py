"""Optimiser and learning-rate schedule of a training run: AdamW parameter groups and cosine with warm-up."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, lr: float,
                 aggregator_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: decay as in open_clip, and the aggregator's parameters at their own learning rate.

    No weight decay on biases, norms, embeddings, the logit scale and the attention query (all ``ndim < 2``).
    Parameters under ``aggregator.`` get ``lr * aggregator_lr_scale`` (see
    :class:`wfa.config.AggregatorConfig`). Empty groups are left out; the model's two groups come first.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = (p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
                   or "embedding" in name or "positional" in name)
        groups.setdefault((name.startswith("aggregator."), not exclude), []).append(p)
    out = []
    for aggregated, decay in ((False, False), (False, True), (True, False), (True, True)):
        if (aggregated, decay) in groups:
            out.append({"params": groups[aggregated, decay], "weight_decay": weight_decay if decay else 0.0,
                        "lr": lr * aggregator_lr_scale if aggregated else lr})
    return out


def build_optimizer(model: nn.Module, train: Any, aggregator_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with ``train``'s (:class:`wfa.config.TrainConfig`) lr, betas, eps and decay.

    The fused implementation (one kernel for all parameters; PyTorch >= 2.4 on CPU and CUDA) where the
    parameters' device supports it, else the default: the same update (equal to float rounding), and on the
    study model 5x less optimizer time per step on CPU (the 12.6M-parameter token embedding dominates;
    BENCHMARKS.md)."""
    groups = param_groups(model, train.weight_decay, train.lr, aggregator_lr_scale)
    kwargs = {"lr": train.lr, "betas": (train.beta1, train.beta2), "eps": train.eps}
    device = next(model.parameters()).device.type
    if device in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):  # an older PyTorch without fused AdamW on this device
            pass
    return torch.optim.AdamW(groups, **kwargs)


def cosine_with_warmup(warmup_steps: int, total_steps: int,
                       progress: Callable[[int], float] | None = None) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to 0.

    The decay follows ``(step - warmup) / (total_steps - warmup)``, or ``progress(step)`` in [0, 1] when
    given (a time-budgeted run passes the fraction of its training time used).
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if progress is not None:
            done = progress(step)
        else:
            done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, done))))

    return factor
