"""Training from a prefix cache: `CachedSkipModel` runs the PeftModel's own modules from block ℓ's cached inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .._torch_utils import device_of
from ..adapter.architectures import discover
from ..integrations.timm import TimmImageClassifier
from .key import _adapter_parts
from .store import CachedPrefixDataset, PrefixCache
from .suffix import HEAD_INPUTS, SuffixRunner, blocks_then_head_input, head_input_of


class CachedSkipModel(nn.Module):
    """`peft_model` trained from a `PrefixCache`: the same modules, minus the frozen prefix's work.

    `forward(cache_index, labels=None)` feeds the cached inputs of block ℓ into the real `SkipSourceLayer` (the
    adapter's block copy and pooling, and the head's projection and gate, are `peft_model`'s own), then

    - ``replace`` fusion: the head classifies the skip P(s); nothing after ℓ runs;
    - ``add``/``concat``: the frozen blocks after ℓ run from block ℓ's output, then the family's ``head_input``,
      to the head input h_L (`suffix_runner`), and the head layer fuses h_L with the skip as in the uncached forward.

    Like the model's own forward, each call opens a scope for the skip (`skipcollapse.adapter.layer.open_scope`)
    and closes it when the call ends.

    It returns `SequenceClassifierOutput(loss, logits)`, so the Trainer and plain `accelerate` loops use it like
    any classifier, on `cache.dataset()`. It holds `peft_model` as a submodule, so `.to()`, `.train()`,
    `.parameters()` and optimizers act on the same tensors, and saving goes through `peft_model`
    (`save_pretrained` here delegates): an adapter trained from the cache loads like any other.
    """

    accepts_loss_kwargs = False  # the loss is a plain batch mean; the Trainer must not pass num_items_in_batch

    def __init__(self, peft_model: nn.Module, cache: PrefixCache) -> None:
        super().__init__()
        cache.check(peft_model)
        pooling = _adapter_parts(peft_model)[1].pooling
        if pooling in ("mean", "per_token"):
            raise ValueError(
                f"training from a prefix cache with pooling={pooling!r} is not supported: the cache keeps block ℓ's "
                "inputs but not the call's attention mask (mean over real tokens) or input ids (the token a decoder "
                "classifies), so cached and uncached training would differ on padded batches. Train without the "
                "cache, or use pooling='cls' for encoders"
            )
        self.peft_model = peft_model
        self.cache = cache
        base, config = _adapter_parts(peft_model)
        self._suffix: SuffixRunner | None = None
        if config.fusion != "replace":
            self._suffix = suffix_runner(base, config.source_layer)

    def forward(self, cache_index: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        base, config = _adapter_parts(self.peft_model)
        if config.source_layer != self.cache.layer:
            raise ValueError(
                f"the active adapter's source_layer is {config.source_layer!r}, but the cache holds the inputs of "
                f"{self.cache.layer!r}; activate the adapter the cache was built for, or build a cache for this one"
            )
        source = base.get_submodule(config.source_layer)
        head = base.get_submodule(config.head_module)
        args, kwargs = self.cache.inputs(cache_index.cpu(), device=device_of(base))
        # this call's scope, as the model's own forward hooks would open it
        with self.peft_model.base_model.call_scope(base) as scope:
            output = source(*args, **kwargs)
            if scope.replaced:  # replace fusion: nothing after ℓ runs; the head classifies P(s), not its input
                logits = head(scope.pooled)
            else:  # add/concat fusion, or adapters disabled
                if self._suffix is None:
                    self._suffix = suffix_runner(base, config.source_layer)
                logits = head(self._suffix(output, args, kwargs))
        loss = None if labels is None else _classification_loss(base, logits, labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def dataset(self) -> CachedPrefixDataset:
        """The training set to pair with this model: `cache.dataset()`."""
        return self.cache.dataset()

    @property
    def base_model(self) -> nn.Module:
        """The SkipCollapse tuner, so the collapse tools (`HeadInputs`, callbacks, losses) work on this model."""
        return self.peft_model.base_model

    @property
    def peft_config(self) -> dict[str, Any]:
        return self.peft_model.peft_config

    @property
    def active_adapter(self) -> str:
        return self.peft_model.active_adapter

    def get_base_model(self) -> nn.Module:
        return self.peft_model.get_base_model()

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        """Save the adapter exactly as `peft_model.save_pretrained` does (the cache is not part of it)."""
        self.peft_model.save_pretrained(*args, **kwargs)


CACHED_SUFFIX_FAMILIES = tuple(HEAD_INPUTS)
"""Model classes whose blocks after ℓ `CachedSkipModel` can run from a cache (needed by add/concat fusion)."""


def suffix_runner(base: nn.Module, source_layer: str) -> SuffixRunner:
    """How to run `base` from block ℓ's output to its head's input h_L, for the families that have one.

    The prefix is skipped, so the model's own forward cannot be used: the blocks after ℓ run in the discovered blocks'
    order, then the model class's ``head_input`` (`cache/suffix.py`).
    """
    arch = discover(base)
    family = type(getattr(base, "timm_model", base)).__name__
    head_input = head_input_of(base)
    runner = None
    if arch is not None and head_input is not None:
        runner = blocks_then_head_input(base, arch.blocks, source_layer, head_input)
    if runner is None:
        raise NotImplementedError(
            f"training from a prefix cache with fusion='add' or 'concat' runs the blocks after the source block from "
            f"its output, which is implemented for {', '.join(CACHED_SUFFIX_FAMILIES)} (source layer: one of their "
            f"blocks), not for {family} with source layer {source_layer!r}. Use SkipCollapseConfig(fusion='replace') "
            "(the blocks after the source do not run at all, so no suffix is needed), or train without the cache."
        )
    return runner


def _classification_loss(base: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss the uncached forward computes: the transformers model's own loss, else `TimmImageClassifier`'s."""
    from transformers import PreTrainedModel

    if isinstance(base, PreTrainedModel):
        return base.loss_function(labels, logits, base.config)
    return TimmImageClassifier.output_from_logits(logits, labels).loss
