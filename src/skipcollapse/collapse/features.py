"""What the classifier head sees: capture it during ordinary forward passes, for any classifier.

The neural-collapse quantities are about the head's input z. A model carrying a SkipCollapse adapter keeps
z on its head layer; any other classifier (a plain transformers/timm model, a LoRA PeftModel) gets a forward
pre-hook on its head, found by `skipcollapse.architectures` or named by the caller. Either way one forward
pass yields logits and features together: measuring never costs a second pass.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..adapter.architectures import candidates_message, discover


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP/accelerate wrappers (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _skipcollapse_tuner(model: nn.Module) -> Optional[nn.Module]:
    from ..adapter.model import SkipCollapseModel

    tuner = getattr(model, "base_model", None)
    return tuner if isinstance(tuner, SkipCollapseModel) else None


class HeadInputs:
    """Capture the head input z of each forward pass of `model` (a context manager; `.latest` after a forward).

    Args:
        model: a classifier, possibly wrapped in a PeftModel and/or DDP.
        head_module: name of the head's final linear layer in the base model; found automatically for the
            supported architectures and for SkipCollapse adapters.
    """

    def __init__(self, model: nn.Module, head_module: Optional[str] = None) -> None:
        model = unwrap(model)
        self._tuner = _skipcollapse_tuner(model)
        self._latest: Optional[torch.Tensor] = None
        self._handle = None
        self.head: nn.Module
        if self._tuner is not None:
            config = self._tuner.peft_config[self._tuner.active_adapters[0]]
            self.head = self._tuner.model.get_submodule(config.head_module)
            return
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        name = head_module or getattr(discover(base), "head", None)
        if name is None:
            raise ValueError(
                f"cannot find the classifier head of {type(base).__name__}; pass head_module=<name of its final "
                f"nn.Linear> ({candidates_message(base, 'classifier', [], kind=nn.Linear)})"
            )
        self.head = base.get_submodule(name)
        self._handle = self.head.register_forward_pre_hook(self._remember)

    def _remember(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._latest = args[0]

    @property
    def latest(self) -> torch.Tensor:
        """z of the last forward pass, with its autograd graph (detach it for metrics)."""
        z = self._tuner.last_features if self._tuner is not None else self._latest
        if z is None:
            raise RuntimeError("no forward pass has run since the capture started")
        return z

    def head_weight(self) -> torch.Tensor:
        """The weight [K, d] of the head that maps z to logits (the adapter's own head under SkipCollapse)."""
        if self._tuner is not None:
            return self.head.skipcollapse_head[self._tuner.active_adapters[0]].weight
        head = self.head
        for attr in ("modules_to_save", "base_layer"):  # peft wrappers of a plain head
            inner = getattr(head, attr, None)
            if isinstance(inner, nn.ModuleDict) and inner:
                head = next(iter(inner.values()))
            elif isinstance(inner, nn.Module):
                head = inner
        return head.weight

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "HeadInputs":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, a ModelOutput or a tuple whose first tensor they are."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch without its labels, on `device`."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def iterate_features(
    model: nn.Module, batches: Iterable[dict[str, Any]], capture: HeadInputs
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (features z, logits, labels) per batch of `{..., "labels"}` dicts, in eval mode and without grad.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        for batch in batches:
            logits = logits_of(model(**model_inputs(batch, device)))
            yield capture.latest.detach(), logits.detach(), batch["labels"].to(device)
    finally:
        model.train(was_training)


def shard_loader(dataset: Dataset, batch_size: int, collate_fn: Any, rank: int = 0, world_size: int = 1) -> DataLoader:
    """This process's share of `dataset` (every `world_size`-th example), without the padding samplers add.

    Distributed samplers repeat examples to even out the shards; summed statistics would then count them twice.
    """
    indices = list(range(rank, len(dataset), world_size))
    return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, collate_fn=collate_fn)
