"""Tiny models of every supported family, built from configs (no hub, no download), and their inputs."""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
from torch import nn

NUM_LABELS = 3


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=NUM_LABELS,
    )
    return ViTForImageClassification(config)


def _hf_resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 2, 1],
        layer_type="bottleneck",
        num_labels=NUM_LABELS,
    )
    return ResNetForImageClassification(config)


def _hf_convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(
        num_channels=3,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 2, 1],
        num_labels=NUM_LABELS,
        patch_size=2,
    )
    return ConvNextForImageClassification(config)


def _text_kwargs() -> dict:
    return dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=NUM_LABELS,
    )


def _hf_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**_text_kwargs()))


def _hf_roberta() -> nn.Module:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    return RobertaForSequenceClassification(RobertaConfig(pad_token_id=1, **_text_kwargs()))


def _hf_distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=64, dim=32, n_layers=4, n_heads=4, hidden_dim=64, max_position_embeddings=64, num_labels=NUM_LABELS
    )
    return DistilBertForSequenceClassification(config)


def _timm(name: str) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_LABELS)


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "hf-vit": _hf_vit,
    "hf-resnet": _hf_resnet,
    "hf-convnext": _hf_convnext,
    "hf-bert": _hf_bert,
    "hf-roberta": _hf_roberta,
    "hf-distilbert": _hf_distilbert,
    "timm-resnet": _timm("test_resnet"),
    "timm-vit": _timm("test_vit"),
    "timm-efficientnet": _timm("test_efficientnet"),
}

IMAGE_SIZES = {"hf-vit": 16, "timm-vit": 160}


def build(family: str, seed: int = 0) -> nn.Module:
    """The same tiny model for the same seed (so a 'fresh base' equals the one an adapter was trained on)."""
    torch.manual_seed(seed)
    return BUILDERS[family]().eval()


def is_hf(family: str) -> bool:
    return family.startswith("hf-")


def is_text(family: str) -> bool:
    return family in ("hf-bert", "hf-roberta", "hf-distilbert")


def make_inputs(family: str, batch: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    """Keyword inputs for the model's forward, labels included for transformers models."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(batch) % NUM_LABELS
    if is_text(family):
        ids = torch.randint(3, 64, (batch, 10), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    size = IMAGE_SIZES.get(family, 32)
    pixels = torch.randn(batch, 3, size, size, generator=g)
    if is_hf(family):
        return {"pixel_values": pixels, "labels": labels}
    return {"x": pixels, "labels": labels}


def logits_of(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run a model on `make_inputs` output: transformers models take the dict, timm models the image tensor."""
    if "x" in inputs:
        return model(inputs["x"])
    return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def loss_of(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if "x" in inputs:
        return nn.functional.cross_entropy(model(inputs["x"]), inputs["labels"])
    return model(**inputs).loss


def training_args(output_dir, **overrides):
    """`TrainingArguments` for the tests' short CPU runs: batch 8, 2 steps, lr 1e-2, nothing saved or reported."""
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        max_steps=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    return TrainingArguments(**{**base, **overrides})
