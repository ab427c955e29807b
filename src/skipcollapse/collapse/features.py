"""What the classifier head sees: capture it during ordinary forward passes, for any classifier.

The neural-collapse quantities are about the head's input z. `HeadInputs` puts a forward pre-hook on the module
that maps z to logits: the head of a plain transformers/timm model or a LoRA PeftModel (found by the adapter's
public `discover`, or named by the caller), or the active adapter's head copy of a SkipCollapse model (found from
its peft config and the head layer's public `classifiers`/`classifier`). A head that runs on every token (decoder
classifiers) is read at the token the model classifies. One forward pass yields logits and features together:
measuring never costs a second pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._torch_utils import device_of, eval_mode
from ..adapter import candidates_message, discover


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP/accelerate wrappers (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _is_compiled(model: nn.Module) -> bool:
    """Whether a torch.compile wrapper sits anywhere among the wrappers `unwrap` strips."""
    while isinstance(model, nn.Module):
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            return True
        model = getattr(model, "module", None)
    return False


def base_model(model: nn.Module) -> nn.Module:
    """The classifier under every wrapper: DDP/accelerate/compile (`unwrap`), then a PeftModel's base model."""
    model = unwrap(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class HeadInputs:
    """Capture the head input z of each forward pass of `model` (a context manager; `.latest` after a forward).

    The capture is a forward pre-hook on the module that maps z to logits, held only while the context is open:
    z (and its autograd graph) lives until the next forward or until the capture closes, never longer.

    Args:
        model: a classifier, possibly wrapped in a PeftModel (any method) and/or DDP.
        head_module: name of the head's final linear layer in the base model; found automatically for the
            supported architectures and for SkipCollapse adapters.
    """

    def __init__(self, model: nn.Module, head_module: str | None = None) -> None:
        self._compiled = _is_compiled(model)
        model = unwrap(model)
        self._latest: torch.Tensor | None = None
        base = base_model(model)
        config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None))
        name = head_module or getattr(config, "head_module", None) or getattr(discover(base), "head", None)
        if name is None:
            raise ValueError(
                f"cannot find the classifier head of {type(base).__name__}; pass head_module=<name of its final "
                f"nn.Linear> ({candidates_message(base, 'classifier', [], kind=nn.Linear)})"
            )
        self.head = base.get_submodule(name)
        # A SkipCollapse head (its public `classifiers`/`classifier`) maps the fused z with its adapter's copy, or
        # its frozen head when adapters are off; a plain head, or a peft wrapper of it, receives z itself.
        adapted = callable(getattr(self.head, "classifiers", None))
        self._active = getattr(model, "active_adapter", None) if adapted else None
        self._targets = list(self.head.classifiers()) if adapted else [self.head]
        self._handles = [t.register_forward_pre_hook(self._remember) for t in self._targets]
        # A head that runs on every token (decoder classifiers) is read at the token the model classifies, found
        # from the call's input ids as the model finds it.
        self._pad_token_id = _pad_token_id(base)
        self._input_ids: torch.Tensor | None = None
        self._handles.append(base.register_forward_pre_hook(self._remember_inputs, with_kwargs=True))
        self._replicated = False

    def _remember_inputs(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._input_ids = ids if isinstance(ids, torch.Tensor) and not ids.is_floating_point() else None

    def _remember(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        # nn.DataParallel runs shallow copies of the model, which share the hooks: the hook then sees a copy.
        self._replicated = self._replicated or not any(module is target for target in self._targets)
        z = args[0]
        if z.dim() == 3:  # [B, T, D]: one head input per token; the model classifies one of them
            rows = torch.arange(z.shape[0], device=z.device)
            z = z[rows, classified_token(self._input_ids, self._pad_token_id, z.shape[1]).to(z.device)]
        self._latest = z

    @property
    def latest(self) -> torch.Tensor:
        """z of the last forward pass, with its autograd graph (detach it for metrics)."""
        if self._replicated:
            raise RuntimeError(
                "the model ran as nn.DataParallel replicas (the Trainer does this on several GPUs without a "
                "launcher), which split each batch's head inputs between threads, so no single z covers the batch. "
                "Launch with `accelerate launch` or `torchrun` (DDP, where the collapse loss and metrics are exact "
                "across processes), or use one GPU (CUDA_VISIBLE_DEVICES=0)"
            )
        if self._latest is None:
            hint = (
                " (the model is compiled: a graph torch.compile built before this capture existed does not run its "
                "hook; create the capture, e.g. CollapseLossFunc or CollapseTrainer, before the first call of the "
                "compiled model, or call torch._dynamo.reset())"
                if self._compiled
                else ""
            )
            raise RuntimeError("no forward pass has run since the capture started" + hint)
        return self._latest

    def head_weight(self) -> torch.Tensor:
        """The weight [K, d] of the head that maps z to logits (the adapter's own head under SkipCollapse)."""
        if self._active is not None:
            return self.head.classifier(self._active).weight
        head = self.head
        for attr in ("modules_to_save", "base_layer"):  # peft wrappers of a plain head
            inner = getattr(head, attr, None)
            if isinstance(inner, nn.ModuleDict) and inner:
                head = next(iter(inner.values()))
            elif isinstance(inner, nn.Module):
                head = inner
        return head.weight

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._latest = None

    def __enter__(self) -> HeadInputs:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def classified_token(input_ids: torch.Tensor | None, pad_token_id: int | None, length: int) -> torch.Tensor:
    """The position a sequence classifier with a per-token head classifies, per example: the rightmost token that
    is not padding (what transformers' decoder classifiers pick, left or right padding alike), or the last position
    when there is no pad token or no input ids."""
    if input_ids is None or pad_token_id is None or input_ids.shape[-1] != length:
        return torch.full((1,), length - 1, dtype=torch.long)
    real = (input_ids != pad_token_id).to(torch.int64)
    return (torch.arange(length, device=input_ids.device) * real).argmax(-1)


def _pad_token_id(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "pad_token_id", None)


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

    Every module's train/eval mode is restored afterwards (`skipcollapse._torch_utils.eval_mode`).
    """
    device = device_of(model)
    with eval_mode(model):
        for batch in batches:
            logits = logits_of(model(**model_inputs(batch, device)))
            yield capture.latest.detach(), logits.detach(), batch["labels"].to(device)


def shard_loader(dataset: Dataset, batch_size: int, collate_fn: Any, rank: int = 0, world_size: int = 1) -> DataLoader:
    """This process's share of `dataset` (every `world_size`-th example), without the padding samplers add.

    Distributed samplers repeat examples to even out the shards; summed statistics would then count them twice.
    """
    indices = list(range(rank, len(dataset), world_size))
    return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, collate_fn=collate_fn)
