"""How to run a model from block ℓ's output to its head's input h_L, per family: what training from a prefix cache
with ``add``/``concat`` fusion needs, since the model's own forward cannot start in the middle.

Each function takes the base model and the source block's name and returns a runner, or None when the block is not
one this family's runner handles. `skipcollapse.adapter.architectures` lists them in its one table of families (the
``suffix`` of each row), which the adapter and the cache both read.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import torch
from torch import nn

from .layer import first_tensor

SuffixRunner = Callable[[Any, tuple[Any, ...], dict[str, Any]], torch.Tensor]
"""(block ℓ's output, block ℓ's positional args, its keyword args) -> the head's input h_L."""


def timm_efficientnet(base: nn.Module, source: str) -> Optional[SuffixRunner]:
    match = re.fullmatch(r"(?:(.+)\.)?blocks\.(\d+)\.(\d+)", source)
    if match is None:
        return None
    root, stage, index = _root(base, match[1]), int(match[2]), int(match[3])

    def run(output: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        x = first_tensor(output)
        for block in root.blocks[stage][index + 1 :]:
            x = block(x)
        for later in root.blocks[stage + 1 :]:
            x = later(x)
        x = root.bn2(root.conv_head(x))
        return root.forward_head(x, pre_logits=True)  # global pool (+ the model's head dropout)

    return run


def timm_resnet(base: nn.Module, source: str) -> Optional[SuffixRunner]:
    match = re.fullmatch(r"(?:(.+)\.)?layer([1-4])\.(\d+)", source)
    if match is None:
        return None
    root, stage, index = _root(base, match[1]), int(match[2]), int(match[3])

    def run(output: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        x = first_tensor(output)
        for block in getattr(root, f"layer{stage}")[index + 1 :]:
            x = block(x)
        for later in range(stage + 1, 5):
            x = getattr(root, f"layer{later}")(x)
        return root.forward_head(x, pre_logits=True)

    return run


def timm_vit(base: nn.Module, source: str) -> Optional[SuffixRunner]:
    match = re.fullmatch(r"(?:(.+)\.)?blocks\.(\d+)", source)
    if match is None:
        return None
    root, index = _root(base, match[1]), int(match[2])

    def run(output: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        x = _later_layers(root.blocks, index, output, args, kwargs)
        return root.forward_head(root.norm(x), pre_logits=True)  # token pool, fc_norm, head dropout

    return run


def hf_resnet(base: nn.Module, source: str) -> Optional[SuffixRunner]:
    match = re.fullmatch(r"(?:(.+)\.)?encoder\.stages\.(\d+)\.layers\.(\d+)", source)
    if match is None or not match[1]:
        return None
    resnet, stage, index = _root(base, match[1]), int(match[2]), int(match[3])
    classifier_model = _root(base, match[1].rpartition(".")[0])
    stages = resnet.encoder.stages

    def run(output: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        x = first_tensor(output)
        for layer in stages[stage].layers[index + 1 :]:
            x = layer(x)
        for later in stages[stage + 1 :]:
            x = later(x)
        return classifier_model.classifier[0](resnet.pooler(x))  # the Flatten before the head's Linear

    return run


def _later_layers(layers: nn.ModuleList, index: int, output: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """Run the encoder layers after `index`, each called as block ℓ was (same mask and flags, new hidden states)."""
    x = first_tensor(output)
    for layer in layers[index + 1 :]:
        if args:
            x = first_tensor(layer(x, *args[1:], **kwargs))
        else:
            x = first_tensor(layer(**{**kwargs, "hidden_states": x}))
    return x


def hf_vit(base: nn.Module, source: str) -> Optional[SuffixRunner]:
    match = re.fullmatch(r"(?:(.+)\.)?((?:encoder\.layer|layers))\.(\d+)", source)
    if match is None:
        return None
    vit, index = _root(base, match[1]), int(match[3])
    layers = vit.get_submodule(match[2])

    def run(output: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        hidden = vit.layernorm(_later_layers(layers, index, output, args, kwargs))
        return hidden[:, 0, :]  # ViTForImageClassification classifies the CLS token

    return run


def hf_bert(base: nn.Module, source: str) -> Optional[SuffixRunner]:
    match = re.fullmatch(r"(?:(.+)\.)?encoder\.layer\.(\d+)", source)
    if match is None or not match[1]:
        return None
    bert, index = _root(base, match[1]), int(match[2])
    classifier_model = _root(base, match[1].rpartition(".")[0])
    if bert.pooler is None:
        return None

    def run(output: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        hidden = _later_layers(bert.encoder.layer, index, output, args, kwargs)
        return classifier_model.dropout(bert.pooler(hidden))  # as BertForSequenceClassification does

    return run


def _root(base: nn.Module, name: Optional[str]) -> nn.Module:
    return base.get_submodule(name) if name else base
