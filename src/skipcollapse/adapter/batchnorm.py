"""Which BatchNorm layers must keep their statistics: one rule for the adapter and for the comparison's baselines
(whose hook that applies it lives with their setups, in recipes/harness/methods.py).

A frozen BatchNorm in train mode normalises with batch statistics and drifts its running statistics, so the frozen
backbone would change under whatever trains on top of it (the classic peft-on-CNN trap). Frozen means: no trainable
parameter (affine-free layers included) and not one of an adapter's own copies, whose statistics are trained and
saved with the adapter.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def frozen_batchnorms(
    model: nn.Module, owned_by_adapter: Callable[[str], object] = lambda name: False
) -> list[nn.Module]:
    """The BatchNorm layers of `model` that must stay in eval mode."""
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not owned_by_adapter(name)
        and not any(p.requires_grad for p in module.parameters())
    ]
