"""How to run a model from block ℓ's output to its head's input h_L: what training from a prefix cache with
``add``/``concat`` fusion needs, since the model's own forward cannot start in the middle.

One runner serves every model: the blocks after ℓ run in the order of the discovered block list, each called as
block ℓ was (same attention mask and flags, new hidden states), then the model class's `head_input` does what the
model does between its last block and its head (final norm, pooling, pre-classifier layers). That last step is the
only per-model code, one short function per row of `HEAD_INPUTS`: neither timm nor transformers publishes "the rest
of the forward after the last block" as a callable. A model whose blocks have something else between them (hf
ConvNeXt's downsampling layers, Swin's patch merging) or whose head runs per token (decoders: the token they
classify is found from the input ids, which the cache does not keep) has no row and no runner.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..adapter.layer import first_tensor

SuffixRunner = Callable[[Any, tuple[Any, ...], dict[str, Any]], torch.Tensor]
"""(block ℓ's output, block ℓ's positional args, its keyword args) -> the head's input h_L."""

HeadInput = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""(the family's model, the last block's hidden states) -> the head's input h_L."""


def blocks_then_head_input(
    model: nn.Module, blocks: list[str], source: str, head_input: Callable[[torch.Tensor], torch.Tensor]
) -> SuffixRunner | None:
    """The runner from `source` (one of `blocks`, names in `model`) through the later blocks and `head_input` (bound
    to the model), or None when `source` is not one of the blocks."""
    if source not in blocks:
        return None
    later = [model.get_submodule(name) for name in blocks[blocks.index(source) + 1 :]]

    def run(output: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        x = first_tensor(output)
        for block in later:
            x = first_tensor(block(x, *args[1:], **kwargs) if args else block(**{**kwargs, "hidden_states": x}))
        return head_input(x)

    return run


# ------------------------------------------------------------------ per model class: last block -> head input
def timm_efficientnet(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.bn2(model.conv_head(x)), pre_logits=True)  # global pool, head dropout


def timm_resnet(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(x, pre_logits=True)


def timm_vit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.norm(x), pre_logits=True)  # token pool, fc_norm, head dropout


def hf_resnet(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.classifier[0](model.resnet.pooler(x))  # the Flatten before the head's Linear


def hf_vit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.vit.layernorm(x)[:, 0, :]  # ViTForImageClassification classifies the CLS token


def hf_bert(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if model.bert.pooler is None:
        raise ValueError("this BERT has no pooler (add_pooling_layer=False), which its classifier needs")
    return model.dropout(model.bert.pooler(x))


def hf_roberta(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    head = model.classifier  # RobertaClassificationHead up to out_proj, the fusion point
    return head.dropout(torch.tanh(head.dense(head.dropout(x[:, 0, :]))))


def hf_distilbert(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.dropout(nn.functional.relu(model.pre_classifier(x[:, 0])))


HEAD_INPUTS: dict[str, HeadInput] = {
    # timm class names
    "EfficientNet": timm_efficientnet,
    "ResNet": timm_resnet,
    "VisionTransformer": timm_vit,
    # transformers class names
    "ResNetForImageClassification": hf_resnet,
    "ViTForImageClassification": hf_vit,
    "BertForSequenceClassification": hf_bert,
    "RobertaForSequenceClassification": hf_roberta,
    "XLMRobertaForSequenceClassification": hf_roberta,
    "CamembertForSequenceClassification": hf_roberta,
    "DistilBertForSequenceClassification": hf_distilbert,
}
"""What each model class does after its last block, up to the head's input; the classes the cache can run."""


def head_input_of(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """`model`'s row of `HEAD_INPUTS`, bound to it, or None."""
    inner = getattr(model, "timm_model", model)
    fn = HEAD_INPUTS.get(type(inner).__name__)
    return None if fn is None else functools.partial(fn, inner)
