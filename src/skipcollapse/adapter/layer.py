"""The tuner layers of SkipCollapse, and the per-call scope that carries the skip from block ℓ to the head.

`SkipSourceLayer` wraps block ℓ: for the active adapter it runs the adapter's copy of the block (or the frozen
block) and pools its output into s. `SkipHeadLayer` wraps the classifier's final linear layer: it turns s into the
skip g·P(norm(s)), fuses it with its usual input h_L and applies the adapter's copy of the head. Under ``replace``
fusion, `SkipBypassLayer` wraps what runs between block ℓ and the head, so that none of it runs.

Why the skip's parameters (P, g) live in the head layer, not in the source layer. What leaves block ℓ outside its
return value must not need block ℓ's parameters in the backward pass: FSDP2 (`fully_shard` on each block, as
accelerate's FSDP plugin does) frees a block's gathered parameters after its forward and gathers them again only
when the gradient reaches the block's outputs. Pooling has no parameters, so s can travel to the head; a projection
applied inside block ℓ's wrapper would run its backward with freed weights (a crash).

How the skip travels. The source and the head are far apart in the model and the model's own forward code sits
between them, so the skip cannot be an argument. It lives in a `CallScope`, created for one forward call of the
model by a forward pre-hook on the model root (`open_scope`) and dropped by a forward hook that runs even when
the forward fails (`close_scope`). The hooks receive the module being called, so each `nn.DataParallel` replica
(a shallow copy with its own module objects) gets its own scope, and replicas running in threads never see each
other's skip. Nothing outlives the call: no exception jumps out of the model, no `forward` is patched, and the
scope is plain Python state that `torch.compile(fullgraph=True)` traces. (peft's `_enable_peft_forward_hooks`
registers hooks per call instead; hook registries are shared between DataParallel replicas and cannot be
registered inside a compiled graph, so a scope opened by hooks registered once is the simpler fit.)

The head-input features z are not kept anywhere: `skipcollapse.collapse.HeadInputs` captures them for metrics
and losses that ask, with a forward pre-hook on the head copy.

Per-adapter state lives in `ModuleDict`/`ParameterDict` containers named `skipcollapse_*`, which is how peft
finds what to train, save, load and delete. When peft keeps adapter weights in float32 on a bf16/fp16 base
(`autocast_adapter_dtype`), inputs are cast to the adapter's dtype and the block copy's output back to the
base's, as peft's LoRA layers do.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

NO_MERGE = (
    "SkipCollapse cannot be merged into the base weights: its skip connection depends on each input (the pooled "
    "output of an intermediate block), which no weight of the base architecture can express. Keep the PeftModel "
    "for inference, or call unload() to get the unmodified base model back."
)


class CallScope:
    """What one forward call of the model passes from block ℓ to the head."""

    __slots__ = ("root", "pooled", "source_output", "replaced")

    def __init__(self, root: nn.Module) -> None:
        self.root = root  # the model object this call runs on (a DataParallel replica's own modules, for instance)
        self.pooled: Optional[torch.Tensor] = None  # s, block ℓ's pooled output, consumed by the head
        self.source_output: Any = None  # block ℓ's raw output: what bypassed blocks return under replace
        self.replaced = False  # a replace adapter's source has run: what follows up to the head is bypassed


def _scoped_layers(root: nn.Module, names: Optional[Sequence[str]] = None) -> list["SkipCollapseLayer"]:
    """The SkipCollapse layers of `root`, the model object this call runs on.

    `names` (where the tuner put its layers, updated on every injection) are looked up in `root` itself, so a
    DataParallel replica finds its own module objects; a list of modules kept across calls would hand a replica the
    original's. Looking up a few names costs microseconds where walking every module costs ~0.2 ms per 300 modules
    and call (EfficientNet-Lite0), a visible share of a GPU forward. Without names, or when a name no longer leads to
    one of our layers, the whole model is walked.
    """
    if names is not None:
        found = [_child(root, name) for name in names]
        if all(isinstance(module, SkipCollapseLayer) for module in found):
            return found
    # a name is gone, or now holds a wrapper around our layer (a checkpoint or compile wrapper put in its place)
    return [m for m in root.modules() if isinstance(m, SkipCollapseLayer)]


def _child(root: nn.Module, name: str) -> Optional[nn.Module]:
    module: Optional[nn.Module] = root
    for part in name.split("."):
        module = module._modules.get(part) if module is not None else None
    return module


def open_scope(root: nn.Module, names: Optional[Sequence[str]] = None) -> CallScope:
    """Give every SkipCollapse layer under `root` (this call's module objects) a fresh scope."""
    scope = CallScope(root)
    for layer in _scoped_layers(root, names):
        layer._scope = scope
    return scope


def close_scope(root: nn.Module, names: Optional[Sequence[str]] = None) -> None:
    """End the call's scope: the skip and block ℓ's output are dropped with it."""
    for layer in _scoped_layers(root, names):
        layer._scope = None


def scope_pre_hook(
    root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], names: Optional[Sequence[str]] = None
) -> None:
    """Forward pre-hook on the model root: each call of the model opens its own scope."""
    open_scope(root, names)


def scope_post_hook(
    root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, names: Optional[Sequence[str]] = None
) -> None:
    """Forward hook on the model root (registered with ``always_call``): the call's scope ends with the call."""
    close_scope(root, names)


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


def _dtype_of(module: nn.Module) -> Optional[torch.dtype]:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _cast(value: Any, dtype: Optional[torch.dtype]) -> Any:
    """Floating tensors in `value` (a tensor, tuple, list or dict of them) cast to `dtype`; the rest as is."""
    if dtype is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    if isinstance(value, dict) and type(value) is dict:
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


class SkipCollapseLayer(nn.Module, BaseTunerLayer):
    """What the layers share: the call scope, one active adapter at a time, no merging, and transparency.

    A wrapped module stays a drop-in for the model code around it: attributes the wrapper does not have (a Swin
    stage's ``downsample``, a block's ``config``) are read from the wrapped module.
    """

    fusion: dict[str, str]
    _scope: Optional[CallScope] = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if name == "base_layer" or "base_layer" not in modules:
                raise
            return getattr(modules["base_layer"], name)

    def _active(self) -> Optional[str]:
        """The adapter this layer runs now, or None when adapters are off or none of its adapters is active."""
        if self.disable_adapters:
            return None
        active = [a for a in self.active_adapters if a in self.fusion]
        if len(active) > 1:
            raise ValueError(f"SkipCollapse runs one adapter at a time, but {active} are active; use set_adapter(name)")
        return active[0] if active else None

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise ValueError(NO_MERGE)

    def unmerge(self) -> None:
        return None


class SkipSourceLayer(SkipCollapseLayer):
    """Block ℓ with, per adapter, an optional trainable copy of the block; hands its pooled output s to the head."""

    adapter_layer_names = ("skipcollapse_block",)
    other_param_names = ("train_source", "pooling", "fusion")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.skipcollapse_block = nn.ModuleDict()
        self.train_source: dict[str, str] = {}
        self.pooling: dict[str, str] = {}
        self.fusion: dict[str, str] = {}
        self.merged_adapters = []

    def update_layer(self, adapter_name: str, *, train_source: str, pooling: str, fusion: str) -> None:
        if train_source != "none":
            self.skipcollapse_block[adapter_name] = copy.deepcopy(self.base_layer)
        self.train_source[adapter_name] = train_source
        self.pooling[adapter_name] = pooling
        self.fusion[adapter_name] = fusion
        self.set_adapter(self.active_adapters)

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode=inference_mode)
        self._refreeze()

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)
        self._refreeze()

    def _refreeze(self) -> None:
        """'norms_biases' trains only the copy's norms and biases, whatever peft's generic operations unfroze."""
        for name, block in self.skipcollapse_block.items():
            if self.train_source.get(name) == "norms_biases":
                _freeze_all_but_norms_and_biases(block)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        scope = self._scope
        if scope is not None and scope.replaced:  # an earlier replace source ended this forward's path
            return scope.source_output
        adapter = self._active()
        if adapter is None:
            return self.base_layer(*args, **kwargs)
        if adapter in self.skipcollapse_block:
            block = self.skipcollapse_block[adapter]
            base_dtype = _dtype_of(self.base_layer)
            output = _cast(block(*_cast(args, _dtype_of(block)), **_cast(kwargs, _dtype_of(block))), base_dtype)
        else:
            output = self.base_layer(*args, **kwargs)
        if scope is None:
            # Outside a model forward (a gradient-checkpointing recomputation of this block): only the output counts.
            return output
        scope.pooled = pool(first_tensor(output), self.pooling[adapter])
        if self.fusion[adapter] == "replace":
            scope.source_output, scope.replaced = output, True
        return output


class SkipGate(nn.Module):
    """g·x with a learned scalar g. A module (not a bare parameter) so that hooks which move weights at call time
    (accelerate's offloading) see it being called."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.to(x.dtype) * x


class SkipBypassLayer(SkipCollapseLayer):
    """A module after block ℓ that a ``replace`` adapter skips: it returns block ℓ's output (a block) or its own
    input (anything else between the blocks and the head) once a replace source has run in this call, and runs
    its module otherwise (adapters off, another fusion, or a source later in the model)."""

    adapter_layer_names = ()
    other_param_names = ("fusion",)

    def __init__(self, base_layer: nn.Module, is_block: bool) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.is_block = is_block
        self.fusion: dict[str, str] = {}
        self.merged_adapters = []

    def update_layer(self, adapter_name: str) -> None:
        self.fusion[adapter_name] = "replace"
        self.set_adapter(self.active_adapters)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        scope = self._scope
        if scope is not None and scope.replaced:
            return scope.source_output if self.is_block else (args[0] if args else next(iter(kwargs.values())))
        return self.base_layer(*args, **kwargs)


class SkipHeadLayer(SkipCollapseLayer):
    """The classifier's final linear layer, with per adapter the skip path (norm → P → g) from block ℓ's pooled
    output s, the fusion of the skip with the layer's input, and a trainable copy of the head."""

    adapter_layer_names = ("skipcollapse_head", "skipcollapse_proj", "skipcollapse_gate")
    other_param_names = ("fusion", "_skip_norms")  # per-adapter dicts: peft's delete_adapter drops their entries

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        # The skip path first, then the head: the order the parameters reach optimizers and gradient clipping in.
        self.skipcollapse_proj = nn.ModuleDict()
        self.skipcollapse_gate = nn.ModuleDict()
        self.skipcollapse_head = nn.ModuleDict()
        self.fusion: dict[str, str] = {}
        # Per adapter, the name of a frozen module of the base model (its final norm) applied to s, or "". A name,
        # looked up in the call's model, not a module held here: a DataParallel replica must use its own copy.
        self._skip_norms: dict[str, str] = {}
        self.merged_adapters = []

    def update_layer(
        self,
        adapter_name: str,
        *,
        fusion: str,
        source_dim: int,
        skip_dim: int,
        projection: str,
        skip_norm: str = "",
    ) -> None:
        base = self.base_layer
        if projection == "identity":
            self.skipcollapse_proj[adapter_name] = nn.Identity()
        else:
            self.skipcollapse_proj[adapter_name] = _linear_like(source_dim, skip_dim, base)
        if fusion != "replace":
            # g = 0: at initialisation the skip adds nothing and the adapted model computes the base model exactly.
            self.skipcollapse_gate[adapter_name] = SkipGate(device=_device_of(base))
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
        self._skip_norms[adapter_name] = skip_norm
        self.set_adapter(self.active_adapters)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._active()
        if adapter is None:
            return self.base_layer(x, *args, **kwargs)
        scope = self._scope
        pooled = None if scope is None else scope.pooled
        if pooled is None:
            raise RuntimeError(
                "the SkipCollapse head ran without its source block's skip in this forward call; call the model "
                "itself (not its head or a submodule), which runs block ℓ before the head"
            )
        scope.pooled = None  # each call's skip is used once
        skip = self._skip(adapter, pooled, scope.root)
        head = self.skipcollapse_head[adapter]
        fusion = self.fusion[adapter]
        if fusion == "replace":
            z = skip
        elif fusion == "concat":
            z = torch.cat([x, skip.to(x.dtype).expand(*x.shape[:-1], skip.shape[-1])], dim=-1)
        else:
            z = x + skip.to(x.dtype)
        return head(_cast(z, _dtype_of(head)))

    def _skip(self, adapter: str, pooled: torch.Tensor, root: nn.Module) -> torch.Tensor:
        """g·P(norm(s)) for add/concat fusion, P(norm(s)) for replace."""
        norm_name = self._skip_norms.get(adapter)
        if norm_name:
            # unwrapped: under replace fusion the final norm sits after block ℓ and is wrapped to be bypassed
            pooled = _base(root.get_submodule(norm_name))(pooled)
        proj = self.skipcollapse_proj[adapter]
        if isinstance(proj, nn.Linear) and pooled.shape[-1] != proj.in_features:
            raise ValueError(
                f"the source block's pooled output has {pooled.shape[-1]} features but adapter {adapter!r} was built "
                f"for source_dim={proj.in_features}; create the adapter with source_dim={pooled.shape[-1]} (or unset)"
            )
        skip = proj(_cast(pooled, _dtype_of(proj)))
        return skip if self.fusion[adapter] == "replace" else self.skipcollapse_gate[adapter](skip)


def _base(module: nn.Module) -> nn.Module:
    """The module a peft layer wraps, or the module itself."""
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _linear_like(in_features: int, out_features: int, reference: nn.Module, bias: bool = True) -> nn.Linear:
    dtype = _dtype_of(reference) or torch.float32
    return nn.Linear(in_features, out_features, bias=bias, device=_device_of(reference), dtype=dtype)


def _freeze_all_but_norms_and_biases(block: nn.Module) -> None:
    for module in block.modules():
        is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if not (is_norm or name == "bias"):
                param.requires_grad = False
