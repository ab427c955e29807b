"""Small torch helpers shared by the adapter, the cache, the collapse tools and the probe: where a module lives, its
dtype, and eval mode for a read-only pass.

It imports nothing but torch, so that any part of the package (the prefix cache included) can use it without
pulling in another part's dependencies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def device_of(module: nn.Module) -> torch.device:
    """The device of `module`'s first parameter; the CPU for a module without parameters."""
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def dtype_of(module: nn.Module, default: torch.dtype | None = None) -> torch.dtype | None:
    """The dtype of `module`'s first floating-point parameter; `default` when it has none."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), default)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """`model` and all its submodules in eval mode inside the block; afterwards every module gets its own mode back.

    Each module's mode is restored, not only the root's: ``model.train(was_training)`` would also switch modules
    that were deliberately in eval inside a model in train mode (frozen BatchNorms) back into train mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
