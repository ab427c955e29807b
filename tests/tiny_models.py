"""Tiny models of every supported family, built from configs (no hub, no download), and their inputs."""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
from torch import nn

NUM_LABELS = 3


def hf_builder(config_class: str, model_class: str, **config_kwargs) -> Callable[[], nn.Module]:
    """A builder of `transformers.<model_class>(transformers.<config_class>(**config_kwargs))`.

    transformers is imported, and the two classes looked up by name, only when the builder runs.
    """

    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_class)(**config_kwargs)
        return getattr(transformers, model_class)(config)

    build.__name__ = build.__qualname__ = model_class
    return build


def hf_image(prefix: str, **config_kwargs) -> Callable[[], nn.Module]:
    """A builder of transformers' `<prefix>ForImageClassification` from `<prefix>Config(**config_kwargs)`."""
    return hf_builder(f"{prefix}Config", f"{prefix}ForImageClassification", **config_kwargs)


def hf_text(prefix: str, **config_kwargs) -> Callable[[], nn.Module]:
    """A builder of transformers' `<prefix>ForSequenceClassification` from `<prefix>Config(**config_kwargs)`."""
    return hf_builder(f"{prefix}Config", f"{prefix}ForSequenceClassification", **config_kwargs)


_BLOCKS = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)  # ViT and text
_TOKENS = dict(vocab_size=64, max_position_embeddings=64, num_labels=NUM_LABELS)
_STAGES = dict(num_channels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_labels=NUM_LABELS)


def _timm(name: str) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_LABELS)


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "hf-vit": hf_image("ViT", image_size=16, patch_size=4, num_channels=3, num_labels=NUM_LABELS, **_BLOCKS),
    "hf-resnet": hf_image("ResNet", embedding_size=8, layer_type="bottleneck", **_STAGES),
    "hf-convnext": hf_image("ConvNext", patch_size=2, **_STAGES),
    "hf-bert": hf_text("Bert", **_BLOCKS, **_TOKENS),
    "hf-roberta": hf_text("Roberta", pad_token_id=1, **_BLOCKS, **_TOKENS),
    "hf-distilbert": hf_text("DistilBert", dim=32, n_layers=4, n_heads=4, hidden_dim=64, **_TOKENS),
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
