"""Small torch helpers shared by the adapter, the cache, the collapse tools and the probe: where a module lives, its
dtype, eval mode for a read-only pass, and how a collated batch splits into model inputs and labels.

It imports nothing but torch, so that any part of the package (the prefix cache included) can use it without
pulling in another part's dependencies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

LABEL_KEYS = ("labels", "label")  # what a dict batch calls its labels: the Trainer's name, then `datasets`' usual one


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


def split_batch(batch: Any, device: torch.device | None = None) -> tuple[Any, torch.Tensor]:
    """(model inputs, labels) of a collated batch, the one rule for every reader of labelled data:

    - a dict (any mapping) with ``"labels"``, or else ``"label"`` (as `datasets` columns are often named): the
      inputs are the dict without that key, passed to the model as keyword arguments;
    - an ``(inputs, labels)`` pair (tuple or list of two): the inputs are its first item, the model's one
      positional argument.

    Anything else raises a TypeError (a dict without labels a ValueError). With `device`, the tensors among the
    inputs are moved there; the labels are returned as a tensor where they were.
    """
    move = (lambda v: v.to(device) if isinstance(v, torch.Tensor) else v) if device is not None else (lambda v: v)
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is None:
            raise ValueError(f"a dict batch must carry its labels under 'labels' or 'label'; got keys {sorted(batch)}")
        return {k: move(v) for k, v in batch.items() if k != key}, torch.as_tensor(batch[key])
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return move(batch[0]), torch.as_tensor(batch[1])
    what = type(batch).__name__
    if isinstance(batch, (tuple, list)):
        what = f"a {what} of {len(batch)} items"
    raise TypeError(
        f"batches must be dicts with 'labels' (or 'label') or (inputs, labels) pairs, got {what}; pass several model "
        "inputs as a dict of keyword arguments"
    )
