"""Where the blocks, the pooling and the head live, per model family.

The adapter needs three facts about a backbone: the ordered list of its blocks (to resolve a block index and
pick a default), the classifier's final linear layer (the fusion point), and how a block's output becomes a
vector (CLS token after the model's final norm for ViT/BERT-style encoders, global average for CNN maps).
Each family is one `_Family` row below; any other `nn.Module` works by naming the modules in the config.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from torch import nn

from . import suffix
from .layer import first_tensor, pool


@dataclass(frozen=True)
class Architecture:
    """What discovery found for one model."""

    family: str
    blocks: list[str]
    head: str
    pooling: str
    skip_norm: str = ""
    modules_to_save: list[str] = field(default_factory=list)
    hidden_size: Optional[int] = None  # width of every block's tokens, when the family has one
    # the last block's hidden states -> the head's input h_L (bound to the model); what the prefix cache runs
    head_input: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


@dataclass(frozen=True)
class _Family:
    name: str
    matches: Callable[[nn.Module], bool]
    block_pattern: str
    head: str
    pooling: str | Callable[[nn.Module], str]
    skip_norm: str | Callable[[nn.Module], str] = ""
    modules_to_save: tuple[str, ...] = ()
    head_input: Optional[suffix.HeadInput] = None  # what the model does after its last block, up to the head


_HF_CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForImageClassification")


def _hf_type(*model_types: str) -> Callable[[nn.Module], bool]:
    def matches(model: nn.Module) -> bool:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return model_type in model_types and type(model).__name__.endswith(_HF_CLASSIFIER_SUFFIXES)

    return matches


def _timm(class_name: str) -> Callable[[nn.Module], bool]:
    def matches(model: nn.Module) -> bool:
        return type(model).__module__.startswith("timm.") and type(model).__name__ == class_name

    return matches


def _timm_vit_pooling(model: nn.Module) -> str:
    return "cls" if getattr(model, "global_pool", "token") == "token" else "mean"


def _timm_vit_norm(model: nn.Module) -> str:
    if _timm_vit_pooling(model) == "cls":
        return "norm"
    return "" if isinstance(getattr(model, "fc_norm", None), (nn.Identity, type(None))) else "fc_norm"


_FAMILIES: tuple[_Family, ...] = (
    _Family("hf-vit", _hf_type("vit"), r"vit\.(?:encoder\.layer|layers)\.\d+", "classifier", "cls", "vit.layernorm",
            head_input=suffix.hf_vit),
    _Family("hf-resnet", _hf_type("resnet"), r"resnet\.encoder\.stages\.\d+\.layers\.\d+", "classifier.1", "avg",
            head_input=suffix.hf_resnet),
    _Family("hf-convnext", _hf_type("convnext"), r"convnext\.encoder\.stages\.\d+\.layers\.\d+", "classifier", "avg"),
    _Family("hf-bert", _hf_type("bert"), r"bert\.encoder\.layer\.\d+", "classifier", "cls",
            head_input=suffix.hf_bert),
    _Family(
        "hf-roberta",
        _hf_type("roberta", "xlm-roberta", "camembert"),
        r"roberta\.encoder\.layer\.\d+",
        "classifier.out_proj",
        "cls",
        modules_to_save=("classifier.dense",),
        head_input=suffix.hf_roberta,
    ),
    _Family(
        "hf-distilbert",
        _hf_type("distilbert"),
        r"distilbert\.transformer\.layer\.\d+",
        "classifier",
        "cls",
        modules_to_save=("pre_classifier",),
        head_input=suffix.hf_distilbert,
    ),
    _Family("timm-vit", _timm("VisionTransformer"), r"blocks\.\d+", "head", _timm_vit_pooling, _timm_vit_norm,
            head_input=suffix.timm_vit),
    _Family("timm-resnet", _timm("ResNet"), r"layer[1-4]\.\d+", "fc", "avg",
            head_input=suffix.timm_resnet),
    _Family("timm-efficientnet", _timm("EfficientNet"), r"blocks\.\d+\.\d+", "classifier", "avg",
            head_input=suffix.timm_efficientnet),
    _Family("timm-convnext", _timm("ConvNeXt"), r"stages\.\d+\.blocks\.\d+", "head.fc", "avg"),
)

SUPPORTED_FAMILIES = tuple(f.name for f in _FAMILIES)
FAMILIES_WITH_SUFFIX = tuple(f.name for f in _FAMILIES if f.head_input is not None)


def discover(model: nn.Module) -> Optional[Architecture]:
    """The architecture of `model`, or None when it is not a family we know.

    Looks through `TimmImageClassifier` (the Trainer-friendly timm wrapper): names then carry its prefix.
    """
    inner = getattr(model, "timm_model", None)
    if isinstance(inner, nn.Module):
        arch = discover(inner)
        if arch is None:
            return None
        return dataclasses.replace(
            arch,
            blocks=["timm_model." + b for b in arch.blocks],
            head="timm_model." + arch.head,
            skip_norm="timm_model." + arch.skip_norm if arch.skip_norm else "",
            modules_to_save=["timm_model." + m for m in arch.modules_to_save],
        )
    for family in _FAMILIES:
        if not family.matches(model):
            continue
        pattern = re.compile(family.block_pattern)
        blocks = [name for name, _ in model.named_modules() if pattern.fullmatch(name)]
        if not blocks:
            continue
        pooling = family.pooling(model) if callable(family.pooling) else family.pooling
        skip_norm = family.skip_norm(model) if callable(family.skip_norm) else family.skip_norm
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if hidden is None and pooling in ("cls", "mean"):
            hidden = getattr(model, "embed_dim", None)
        return Architecture(
            family=family.name,
            blocks=blocks,
            head=family.head,
            pooling=pooling,
            skip_norm=skip_norm,
            modules_to_save=list(family.modules_to_save),
            hidden_size=hidden if pooling in ("cls", "mean") else None,
            head_input=functools.partial(family.head_input, model) if family.head_input else None,
        )
    return None


def block_names(model: nn.Module) -> list[str]:
    """The ordered block names of a supported model ([] for others): what `source_layer` indices refer to."""
    arch = discover(model)
    return arch.blocks if arch else []


def example_inputs(model: nn.Module) -> Optional[dict[str, torch.Tensor]]:
    """A tiny batch the model accepts, from what it says about its inputs (transformers configs, timm's
    pretrained_cfg), or None when it says nothing."""
    config = getattr(model, "config", None)
    name = getattr(model, "main_input_name", None)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if name == "pixel_values" and config is not None and getattr(config, "image_size", None):
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.zeros(2, channels, size, size, device=device, dtype=dtype)}
    if name == "input_ids":
        ids = torch.full((2, 8), 1, dtype=torch.long, device=device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    inner = getattr(model, "timm_model", model)
    cfg = getattr(inner, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        channels, height, width = cfg["input_size"]
        pixels = torch.zeros(2, channels, height, width, device=device, dtype=dtype)
        return {"pixel_values": pixels} if inner is not model else {"x": pixels}
    return None


@torch.no_grad()
def measure_output_width(model: nn.Module, source: str, pooling: str) -> Optional[int]:
    """Width of `source`'s pooled output, measured by one forward pass of an example batch (eval mode, modes
    restored), or None when the model gives no way to build an example. Measuring beats reading layer sizes off
    the block: a stage that ends with a downsampling layer (Swin) reports the wrong width when guessed."""
    inputs = example_inputs(model)
    if inputs is None:
        return None
    seen: list[int] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        seen.append(pool(first_tensor(output), pooling).shape[-1])

    modes = {m: m.training for m in model.modules()}
    handle = model.get_submodule(source).register_forward_hook(hook)
    try:
        model.eval()
        if "x" in inputs:
            model(inputs["x"])
        else:
            model(**inputs)
    except (RuntimeError, ValueError, TypeError, IndexError):  # the example was rejected: read sizes instead
        return None
    finally:
        handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return seen[0] if seen else None


def infer_output_width(module: nn.Module) -> Optional[int]:
    """Channel/feature width of a block's output, read off its last width-carrying layer.

    Blocks end with a linear/conv layer or a norm over the output width (residual blocks, transformer layers,
    inverted residuals), so the last such layer in registration order gives the width without a forward pass.
    """
    width = None
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            width = sub.out_features
        elif isinstance(sub, nn.modules.conv._ConvNd):
            width = sub.out_channels
        elif isinstance(sub, nn.modules.batchnorm._NormBase) and sub.num_features:
            width = sub.num_features
        elif isinstance(sub, nn.LayerNorm) and sub.normalized_shape:
            width = sub.normalized_shape[-1]
        elif isinstance(sub, nn.GroupNorm):
            width = sub.num_channels
    return width


def candidates_message(model: nn.Module, wanted: str, blocks: list[str], kind: type | None = None) -> str:
    """Text listing the names a user most likely meant, for errors about a module name."""
    names = [n for n, m in model.named_modules() if n and (kind is None or isinstance(m, kind))]
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.5)
    parts = []
    if close:
        parts.append(f"closest names: {close}")
    if blocks and kind is None:
        parts.append(f"blocks of this model (index 0..{len(blocks) - 1}): {_abbreviate(blocks)}")
    elif kind is not None:
        parts.append(f"{kind.__name__} modules of this model: {_abbreviate(names)}")
    return "; ".join(parts) if parts else "the model has no such module"


def _abbreviate(names: list[str], keep: int = 8) -> str:
    if len(names) <= keep:
        return str(names)
    return str(names[: keep // 2] + ["..."] + names[-keep // 2 :])
