"""The two tuner layers of SkipCollapse: the skip's source block and the head that receives it.

`SkipSourceLayer` wraps block ℓ. For the active adapter it runs the adapter's trainable copy of the block (or
the frozen block itself), pools its output into a vector s, and hands g·P(s) to the head. `SkipHeadLayer`
wraps the classifier's final linear layer: it fuses its usual input h_L with the skip and applies the
adapter's copy of the head. The fused head input z of the last forward pass stays on the layer
(`last_features`) so metrics and the collapse-aware loss need no second pass.

Per-adapter state lives in `ModuleDict`/`ParameterDict` containers named `skipcollapse_*`, which is how peft
finds what to train, save, load and delete.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


class SkipToHead(Exception):
    """Raised by the source layer under `replace` fusion to stop the forward after block ℓ.

    The blocks after ℓ contribute nothing to the output then, so running them would only cost time; the tuner's
    forward catches this and applies the head to the skip features.
    """

    def __init__(self, skip: torch.Tensor, adapter_name: str) -> None:
        super().__init__("SkipCollapse replace fusion: the forward continues at the head")
        self.skip = skip
        self.adapter_name = adapter_name


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden states of a block's output: the tensor itself, or the first item of a tuple/ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):
        return output.to_tuple()[0]
    raise TypeError(f"cannot find the hidden states in a block output of type {type(output).__name__}")


def pool(hidden: torch.Tensor, pooling: str) -> torch.Tensor:
    """Turn a block's hidden states into one vector per example."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        return hidden.mean(dim=1)
    if pooling == "avg":
        return hidden.flatten(2).mean(dim=-1) if hidden.dim() > 2 else hidden
    return hidden.flatten(1)


class SkipCollapseLayer(nn.Module, BaseTunerLayer):
    """What both layers share: one active adapter at a time, and no merging into base weights."""

    fusion: dict[str, str]

    def _active(self) -> Optional[str]:
        """The adapter this layer runs now, or None when adapters are off or none of its adapters is active."""
        if self.disable_adapters:
            return None
        active = [a for a in self.active_adapters if a in self.fusion]
        if len(active) > 1:
            raise ValueError(f"SkipCollapse runs one adapter at a time, but {active} are active; use set_adapter(name)")
        return active[0] if active else None

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise NotImplementedError(NO_MERGE)

    def unmerge(self) -> None:
        return None


class SkipSourceLayer(SkipCollapseLayer):
    """Block ℓ with, per adapter, an optional trainable copy of the block and the skip path (pool → norm → P → g)."""

    adapter_layer_names = ("skipcollapse_block", "skipcollapse_proj", "skipcollapse_gate")
    other_param_names = ("train_source", "pooling", "fusion")

    def __init__(self, base_layer: nn.Module, skip_norm: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.skipcollapse_block = nn.ModuleDict()
        self.skipcollapse_proj = nn.ModuleDict()
        self.skipcollapse_gate = nn.ParameterDict()
        self.train_source: dict[str, str] = {}
        self.pooling: dict[str, str] = {}
        self.fusion: dict[str, str] = {}
        # A frozen module of the base model (its final norm), held outside the module tree so it is neither
        # saved with the adapter nor counted twice.
        self._skip_norm = [skip_norm] if skip_norm is not None else []
        self._pending_skip: Optional[torch.Tensor] = None
        self.merged_adapters = []

    def update_layer(
        self,
        adapter_name: str,
        *,
        train_source: str,
        pooling: str,
        fusion: str,
        source_dim: int,
        target_dim: int,
        projection: str,
    ) -> None:
        if train_source != "none":
            block = copy.deepcopy(self.base_layer)
            self.skipcollapse_block[adapter_name] = block
        if projection == "identity":
            self.skipcollapse_proj[adapter_name] = nn.Identity()
        else:
            self.skipcollapse_proj[adapter_name] = _linear_like(source_dim, target_dim, self.base_layer)
        if fusion != "replace":
            # g = 0: at initialisation the skip adds nothing and the adapted model computes the base model exactly.
            self.skipcollapse_gate[adapter_name] = nn.Parameter(torch.zeros(1, device=_device_of(self.base_layer)))
        self.train_source[adapter_name] = train_source
        self.pooling[adapter_name] = pooling
        self.fusion[adapter_name] = fusion
        self.set_adapter(self.active_adapters)

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode=inference_mode)
        # 'norms_biases' trains only the copy's norms and biases: re-freeze the rest after every (re)activation.
        for name, block in self.skipcollapse_block.items():
            if self.train_source.get(name) == "norms_biases":
                _freeze_all_but_norms_and_biases(block)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        adapter = self._active()
        if adapter is None:
            return self.base_layer(*args, **kwargs)
        block = self.skipcollapse_block[adapter] if adapter in self.skipcollapse_block else self.base_layer
        output = block(*args, **kwargs)
        skip = pool(first_tensor(output), self.pooling[adapter])
        for norm in self._skip_norm:
            skip = norm(skip)
        skip = self.skipcollapse_proj[adapter](skip)
        if self.fusion[adapter] == "replace":
            raise SkipToHead(skip, adapter)
        self._pending_skip = self.skipcollapse_gate[adapter].to(skip.dtype) * skip
        return output

    def pop_skip(self) -> torch.Tensor:
        """The skip features of the current forward pass; each forward's skip is consumed exactly once."""
        skip, self._pending_skip = self._pending_skip, None
        if skip is None:
            raise RuntimeError(
                "the SkipCollapse head ran but its source block did not run in this forward pass; the head and the "
                "source block must be called by the same model forward"
            )
        return skip

class SkipHeadLayer(SkipCollapseLayer):
    """The classifier's final linear layer: fuses its input with the skip and applies the adapter's head copy."""

    adapter_layer_names = ("skipcollapse_head",)
    other_param_names = ("fusion",)

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.skipcollapse_head = nn.ModuleDict()
        self.fusion: dict[str, str] = {}
        self._sources: dict[str, SkipSourceLayer] = {}  # plain dict: the source is already in the module tree
        self.last_features: Optional[torch.Tensor] = None
        self.merged_adapters = []

    def update_layer(self, adapter_name: str, *, fusion: str, skip_dim: int) -> None:
        base = self.base_layer
        if fusion == "concat":
            head = _linear_like(base.in_features + skip_dim, base.out_features, base, bias=base.bias is not None)
            with torch.no_grad():
                head.weight[:, : base.in_features].copy_(base.weight)
                if base.bias is not None:
                    head.bias.copy_(base.bias)
        else:
            head = copy.deepcopy(base)
        self.skipcollapse_head[adapter_name] = head
        self.fusion[adapter_name] = fusion
        self.set_adapter(self.active_adapters)

    def link_source(self, adapter_name: str, source: SkipSourceLayer) -> None:
        self._sources[adapter_name] = source

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._active()
        if adapter is None:
            self.last_features = x
            return self.base_layer(x, *args, **kwargs)
        skip = self._sources[adapter].pop_skip().to(x.dtype)
        if self.fusion[adapter] == "concat":
            z = torch.cat([x, skip.expand(*x.shape[:-1], skip.shape[-1])], dim=-1)
        else:
            z = x + skip
        return self.classify(z, adapter)

    def classify(self, z: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """Apply the adapter's head to fused features z, remembering z for metrics and losses."""
        self.last_features = z
        return self.skipcollapse_head[adapter_name](z)


NO_MERGE = (
    "SkipCollapse cannot be merged into the base weights: its skip connection depends on each input (the pooled "
    "output of an intermediate block), which no weight of the base architecture can express. Keep the PeftModel "
    "for inference, or call unload() to get the unmodified base model back."
)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _linear_like(in_features: int, out_features: int, reference: nn.Module, bias: bool = True) -> nn.Linear:
    dtype = next((p.dtype for p in reference.parameters() if p.is_floating_point()), torch.float32)
    return nn.Linear(in_features, out_features, bias=bias, device=_device_of(reference), dtype=dtype)


def _freeze_all_but_norms_and_biases(block: nn.Module) -> None:
    for module in block.modules():
        is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if not (is_norm or name == "bias"):
                param.requires_grad = False

