"""Where a classifier's blocks and head are, read from what timm and transformers publish about the model.

The adapter needs the ordered list of a backbone's blocks (to resolve a block index and pick a default), the
classifier's final linear layer (the fusion point), the modules of the task head that fine-tuning must train, and
the model's own final norm (applied to the skip where the widths match). How a block's output becomes what the head
takes (the CLS token, a mean over tokens, an average over a map, every token of a decoder) is measured on an
example batch when the adapter is created (`adapter.measure`), not read from here.

- timm: `group_matcher()` names the blocks (its per-block patterns), `get_classifier()` the head.
- transformers: the blocks are the model's layer classes, the ones it checkpoints (`GradientCheckpointingLayer`)
  or, failing that, keeps whole when sharding (`_no_split_modules`); the head is the last linear layer with
  `config.num_labels` outputs outside the base model (`base_model_prefix`); the rest of the task head outside the
  base model (RoBERTa's `classifier.dense`, DeBERTa's `pooler`, ModernBERT's `head`) is new at fine-tuning time,
  so it trains too.
- `_BLOCK_CLASSES` holds what neither says, one row per model class with the reason.
Any other `nn.Module` works by naming the modules in the config.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

# Models whose published layer classes are not their blocks. Each row: the model class -> its block classes.
_BLOCK_CLASSES: dict[str, tuple[str, ...]] = {
    # transformers marks only the conv sub-layers and the shortcut as no-split, and checkpoints nothing
    "ResNetForImageClassification": ("ResNetBottleNeckLayer", "ResNetBasicLayer"),
    # transformers publishes no layer class for MobileNetV2 (no checkpointing, no no-split modules)
    "MobileNetV2ForImageClassification": ("MobileNetV2InvertedResidual",),
    # MPNet's layers are neither checkpointing layers nor no-split modules
    "MPNetForSequenceClassification": ("MPNetLayer",),
    # ALBERT publishes no layer class; its one layer runs at every depth (and is refused as a source for that)
    "AlbertForSequenceClassification": ("AlbertLayer",),
    # BiT and MobileNetV1 publish no layer class either
    "BitForImageClassification": ("BitPreActivationBottleneckLayer", "BitBottleneckLayer"),
    "MobileNetV1ForImageClassification": ("MobileNetV1ConvLayer",),
}

_NORM_NAME = re.compile(r"(Layer|RMS|Group)Norm$|^LayerNorm$|^RMSNorm$")


@dataclass(frozen=True)
class Architecture:
    """What discovery found for one model."""

    family: str  # "transformers:<model_type>" or "timm:<class name>"
    blocks: list[str]
    head: str
    modules_to_save: list[str] = field(default_factory=list)
    final_norm: str = ""  # the model's norm after its last block over the feature axis, if it has one


def discover(model: nn.Module) -> Architecture | None:
    """The blocks and head of `model`, or None when it is neither a timm nor a transformers classifier whose blocks
    and head can be found.

    Looks through `TimmImageClassifier` (the Trainer-friendly timm wrapper): names then carry its prefix.
    """
    inner = getattr(model, "timm_model", None)
    if isinstance(inner, nn.Module):
        arch = discover(inner)
        if arch is None:
            return None
        prefix = "timm_model."
        return dataclasses.replace(
            arch,
            blocks=[prefix + b for b in arch.blocks],
            head=prefix + arch.head,
            modules_to_save=[prefix + m for m in arch.modules_to_save],
            final_norm=prefix + arch.final_norm if arch.final_norm else "",
        )
    if is_timm_model(model):
        return _timm_architecture(model)
    if _is_transformers_model(model):
        return _transformers_architecture(model)
    return None


def _walk(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """`named_modules()` of the model as its author built it: a peft wrapper (a tuner layer, or the copy-keeping
    wrapper of `modules_to_save`) stands for the module it wraps, under the wrapped module's name, and the
    adapters' own modules inside it are not listed. Discovery on a model that already has adapters then finds the
    same blocks and head as on the plain model."""
    yield prefix, model
    for name, child in model._modules.items():
        if child is None:
            continue
        full = f"{prefix}.{name}" if prefix else name
        inner = _wrapped(child)
        if inner is not child:
            yield full, inner
            yield from ((n, m) for n, m in _walk(inner, full) if n != full)
        else:
            yield from _walk(child, full)


def _wrapped(module: nn.Module) -> nn.Module:
    for attr in ("base_layer", "original_module"):  # peft's tuner layers; peft's ModulesToSaveWrapper
        inner = module._modules.get(attr)
        if isinstance(inner, nn.Module):
            return _wrapped(inner)
    return module


def block_names(model: nn.Module) -> list[str]:
    """The ordered block names of a discovered model ([] for others): what `source_layer` indices refer to."""
    arch = discover(model)
    return arch.blocks if arch else []


def default_source_block(blocks: list[str]) -> str:
    """The block SCL-FT fine-tunes when no `source_layer` is given: the middle one, ``blocks[len(blocks) // 2]``."""
    return blocks[len(blocks) // 2]


def is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "group_matcher")


def _is_transformers_model(model: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


# ------------------------------------------------------------------------------------------------------- timm
def _timm_architecture(model: nn.Module) -> Architecture | None:
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Module):
        return None  # distilled models (DeiT-distilled, LeViT) average two heads: no one linear layer to fuse at
    classifier = _wrapped(classifier)
    head = _name_of(model, classifier) if isinstance(classifier, nn.Linear) else None
    matcher = model.group_matcher(coarse=False).get("blocks")
    if head is None or matcher is None:
        return None
    # group_matcher's block patterns: a pattern, or (pattern, None) pairs beside (pattern, (n,)) pairs that place
    # other modules (a stage's downsampling, the final norm) in a block's group without being blocks themselves
    rules = [matcher] if isinstance(matcher, str) else [p for p, order in matcher if order is None]
    patterns = [re.compile(p) for p in rules]
    blocks = [name for name, _ in _walk(model) if name and _matches_whole(patterns, name)]
    if not blocks:
        return None
    return Architecture(
        family=f"timm:{type(model).__name__}", blocks=blocks, head=head, final_norm=_final_norm(model, blocks, head)
    )


def _matches_whole(patterns: list[re.Pattern], name: str) -> bool:
    for pattern in patterns:
        match = pattern.match(name)
        if match and match.group(0) == name:
            return True
    return False


# ------------------------------------------------------------------------------------------------ transformers
def _transformers_architecture(model: nn.Module) -> Architecture | None:
    num_labels = getattr(model.config, "num_labels", None)
    blocks = _transformers_blocks(model)
    if not blocks:
        return None
    # The backbone: the model's top-level modules that hold its blocks (the base model, `base_model_prefix`, or
    # CLIP's `vision_model`); the head and the rest of the task head lie outside it.
    backbone = {b.split(".")[0] for b in blocks}

    def in_backbone(name: str) -> bool:
        return name.split(".")[0] in backbone

    heads = [
        name
        for name, module in _walk(model)
        if isinstance(module, nn.Linear) and module.out_features == num_labels and not in_backbone(name)
    ]
    if not heads:
        return None
    head = heads[-1]
    return Architecture(
        family=f"transformers:{model.config.model_type}",
        blocks=blocks,
        head=head,
        modules_to_save=_task_head_modules(model, head, in_backbone),
        final_norm=_final_norm(model, blocks, head),
    )


def _transformers_blocks(model: nn.Module) -> list[str]:
    """The model's blocks: a row of `_BLOCK_CLASSES`, else its checkpointing layers, else its no-split modules;
    the innermost of them where they nest (a Swin stage and its layers: the layers)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    row = _BLOCK_CLASSES.get(type(model).__name__)
    if row is not None:
        candidates = [n for n, m in _walk(model) if type(m).__name__ in row]
    else:
        candidates = [n for n, m in _walk(model) if isinstance(m, GradientCheckpointingLayer)]
        if not candidates:
            no_split = set(getattr(model, "_no_split_modules", None) or ())
            candidates = [
                n for n, m in _walk(model) if type(m).__name__ in no_split and "Embedding" not in type(m).__name__
            ]
    return [name for name in candidates if not any(other.startswith(name + ".") for other in candidates)]


def _task_head_modules(model: nn.Module, head: str, in_backbone: Callable[[str], bool]) -> list[str]:
    """The parameter-carrying modules of the task head other than its final linear layer: the top-most ones
    outside the backbone that are not the head or one of its ancestors. A bare norm there (PoolFormer's final
    GroupNorm) belongs to the pretrained backbone, which registers it beside its task head, and stays frozen."""
    kept: list[str] = []
    for name, module in _walk(model):
        if not name or in_backbone(name) or name == head or head.startswith(name + "."):
            continue
        if any(name.startswith(k + ".") for k in kept) or next(module.parameters(), None) is None:
            continue
        if _is_norm(module):
            continue
        kept.append(name)
    return kept


def _is_norm(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
        or "Norm" in type(module).__name__
    )


# ---------------------------------------------------------------------------------------------------- shared
def _final_norm(model: nn.Module, blocks: list[str], head: str) -> str:
    """The first norm over the feature axis that the model registers after its last block, outside the head:
    ViT's final LayerNorm, a decoder's final RMSNorm. Only norms over the last axis of a [B, D] or [B, T, D]
    input qualify (not BatchNorm, not the 2-D LayerNorm of channels-first maps)."""
    last = blocks[-1]
    after = False
    for name, module in _walk(model):
        if name == last:
            after = True
            continue
        if not after or name.startswith(last + ".") or name == head:
            continue
        kind = type(module).__name__
        if _NORM_NAME.search(kind) and "2d" not in kind.lower() and next(module.parameters(), None) is not None:
            return name
    return ""


def norm_width(module: nn.Module) -> int | None:
    """The feature width a final norm normalises (its weight's length)."""
    weight = getattr(module, "weight", None)
    return weight.shape[-1] if isinstance(weight, torch.Tensor) and weight.dim() == 1 else None


def _name_of(model: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, module in _walk(model) if module is target), None)


def infer_output_width(module: nn.Module) -> int | None:
    """Channel/feature width of a block's output, read off its last width-carrying layer.

    Blocks end with a linear/conv layer or a norm over the output width (residual blocks, transformer layers,
    inverted residuals), so the last such layer in registration order gives the width without a forward pass.
    Used to tell a map's channel axis from its spatial axes, and for models no example batch can be built for.
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
    names = [n for n, m in _walk(model) if n and (kind is None or isinstance(m, kind))]
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
