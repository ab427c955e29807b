"""A timm model with the calling convention of a transformers image classifier.

timm models take an image tensor and return logits; the transformers `Trainer` passes `pixel_values=` and
`labels=` and expects a loss back. This thin wrapper speaks the Trainer's language and nothing else, and
SkipCollapse's architecture discovery looks through it (module names gain the `timm_model.` prefix).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput


class TimmImageClassifier(nn.Module):
    """`forward(pixel_values, labels=None) -> SequenceClassifierOutput(loss, logits)` around a timm model."""

    def __init__(self, timm_model: nn.Module) -> None:
        super().__init__()
        self.timm_model = timm_model

    @property
    def num_labels(self) -> int:
        return self.timm_model.num_classes

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        return self.output_from_logits(self.timm_model(pixel_values), labels)

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """What the Trainer calls for ``activation_checkpointing=True`` (``gradient_checkpointing=True``): timm's own
        checkpointing of its blocks (`set_grad_checkpointing`), which chooses its checkpoint settings itself."""
        if every_n_layers != 1 or offload:
            raise ValueError(
                "timm models checkpoint every block and keep the saved activations where they are: every_n_layers "
                f"must be 1 and offload False (got {every_n_layers} and {offload}); drop those checkpointing options"
            )
        self.timm_model.set_grad_checkpointing(True)

    def activation_checkpointing_disable(self) -> None:
        self.timm_model.set_grad_checkpointing(False)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """The older name, which peft and the Trainer of transformers < 5 call."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    gradient_checkpointing_disable = activation_checkpointing_disable

    @staticmethod
    def output_from_logits(logits: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        """What `forward` returns for these logits (also used when an adapter computes the logits itself)."""
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
