"""The fine-tuning methods the comparison recipe puts side by side, each prepared on the same backbone.

* `linear-probe`: only the classifier head trains.
* `full-ft`: everything trains.
* `lora`: peft LoRA (r=8) on the blocks' linear and pointwise-conv layers, head trained in full.
* `layer-ft`: block ℓ and the head train, no skip (the ablation of SCL-FT).
* `scl-ft`: the SkipCollapse adapter: block ℓ fine-tuned, its features routed to the head.
* `scl-ft+collapse`: SCL-FT trained with the collapse-aware loss (the recipe passes λ to `CollapseTrainer`).

Frozen BatchNorm layers keep their running statistics in every method but full fine-tuning, as the adapter does:
a baseline whose frozen backbone drifts in train mode would be measured unfairly.
"""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from torch import nn

from skipcollapse.adapter.architectures import default_source_block, discover
from skipcollapse.adapter.batchnorm import frozen_batchnorms
from skipcollapse.adapter.config import SkipCollapseConfig

METHODS = ("linear-probe", "full-ft", "lora", "layer-ft", "scl-ft", "scl-ft+collapse")
BLOCK_METHODS = ("layer-ft", "scl-ft", "scl-ft+collapse")  # the methods that fine-tune one source block


def prepare(model: nn.Module, method: str, source_layer: str | int | None = None, lora_rank: int = 8) -> nn.Module:
    """`model` set up to train with `method` (a new PeftModel for the peft methods)."""
    arch = discover(model)
    if arch is None:
        raise ValueError(f"the comparison needs a supported architecture; {type(model).__name__} is not one")
    if method in ("scl-ft", "scl-ft+collapse"):
        return get_peft_model(model, SkipCollapseConfig(source_layer=source_layer))
    if method == "full-ft":
        for p in model.parameters():
            p.requires_grad = True
        return model
    if method == "lora":
        targets = [
            name
            for name, m in model.named_modules()
            if any(name.startswith(b + ".") for b in arch.blocks) and _lora_compatible(m)
        ]
        config = LoraConfig(
            r=lora_rank,
            lora_alpha=2 * lora_rank,
            target_modules=targets,
            modules_to_save=[arch.head, *arch.modules_to_save],
        )
        peft_model = get_peft_model(model, config)
        keep_frozen_batchnorm_in_eval(peft_model)
        return peft_model
    trainable = [arch.head] + arch.modules_to_save
    if method == "layer-ft":
        trainable.append(_block_name(arch.blocks, source_layer))
    elif method != "linear-probe":
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    for name, p in model.named_parameters():
        p.requires_grad = any(name.startswith(t + ".") for t in trainable)
    keep_frozen_batchnorm_in_eval(model)
    return model


def _lora_compatible(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1  # LoRA on depthwise convs gains little


def _block_name(blocks: list[str], source_layer: str | int | None) -> str:
    if source_layer is None:
        return default_source_block(blocks)
    return blocks[source_layer] if isinstance(source_layer, int) else source_layer


def keep_frozen_batchnorm_in_eval(model: nn.Module) -> None:
    """For models without a tuner to override `train()`: a forward pre-hook puts each frozen BatchNorm in eval mode on
    every call, so `model.train()` (which the Trainer calls each step) cannot put it back into batch statistics."""

    def to_eval(module: nn.Module, args: tuple) -> None:
        module.training = False

    for module in frozen_batchnorms(model):
        module.register_forward_pre_hook(to_eval)
