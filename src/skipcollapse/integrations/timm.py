"""A timm model with the calling convention of a transformers image classifier.

timm models take an image tensor and return logits; the transformers `Trainer` passes `pixel_values=` and
`labels=` and expects a loss back. This thin wrapper speaks the Trainer's language and nothing else, and
SkipCollapse's architecture discovery looks through it (module names gain the `timm_model.` prefix).
"""

from __future__ import annotations

from typing import Optional

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

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None) -> SequenceClassifierOutput:
        return self.output_from_logits(self.timm_model(pixel_values), labels)

    @staticmethod
    def output_from_logits(logits: torch.Tensor, labels: Optional[torch.Tensor] = None) -> SequenceClassifierOutput:
        """What `forward` returns for these logits (also used when an adapter computes the logits itself)."""
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
