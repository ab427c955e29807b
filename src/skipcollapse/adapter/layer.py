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
the forward fails (`close_scope`). Open scopes are kept per thread (a thread-local stack), and each scope serves the
layers of the module object being called: several threads calling one model object at once (an inference server's
pool, one thread training while another evaluates) each get their own scope, and each `nn.DataParallel` replica (a
shallow copy with its own module objects, run in its own thread) finds its own layers. Nothing outlives the call: no
exception jumps out of the model, no `forward` is patched, and `torch.compile(fullgraph=True)` traces the scope as
plain Python state. (peft's `_enable_peft_forward_hooks` registers hooks per call instead; hook registries are
shared between DataParallel replicas and cannot be registered inside a compiled graph, so a scope opened by hooks
registered once is the simpler fit.)

The head-input features z are not kept anywhere: `skipcollapse.collapse.HeadInputs` captures them for metrics
and losses that ask, with a forward pre-hook on the head copy.

Per-adapter state lives in `ModuleDict`/`ParameterDict` containers named `skipcollapse_*`, which is how peft
finds what to train, save, load and delete. When peft keeps adapter weights in float32 on a bf16/fp16 base
(`autocast_adapter_dtype`), inputs are cast to the adapter's dtype and the block copy's output back to the
base's, as peft's LoRA layers do.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .._torch_utils import device_of, dtype_of

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

NO_MERGE = (
    "SkipCollapse cannot be merged into the base weights: its skip connection depends on each input (the pooled "
    "output of an intermediate block), which no weight of the base architecture can express. Keep the PeftModel "
    "for inference, or call unload() to get the unmodified base model back."
)


class CallScope:
    """What one forward call of the model passes from block ℓ to the head."""

    __slots__ = ("root", "layers", "token_mask", "pooled", "source_output", "source_hidden", "replaced")

    def __init__(self, root: nn.Module, layers: Sequence[SkipCollapseLayer], token_mask: torch.Tensor | None):
        self.root = root  # the model object this call runs on (a DataParallel replica's own modules, for instance)
        self.layers = tuple(layers)  # the SkipCollapse layers of `root`: the ones this scope serves
        self.token_mask = token_mask  # [B, T] real (1) and padding (0) tokens of this call's input, when it has them
        self.pooled: torch.Tensor | None = None  # s, block ℓ's pooled output, consumed by the head
        self.source_output: Any = None  # block ℓ's raw output
        self.source_hidden: torch.Tensor | None = None  # its hidden states: what bypassed modules hand on
        self.replaced = False  # a replace adapter's source has run: what follows up to the head is bypassed

    def serves(self, layer: SkipCollapseLayer) -> bool:
        return any(layer is own for own in self.layers)


# The scopes open in this thread, innermost last. Per thread, because one model object may be called from several
# threads at once (an inference server's pool, DataParallel's replicas, one thread training while another
# evaluates): a scope kept on the shared layer objects would hand one call's skip to another call's head.
_THREAD = threading.local()


def _open_scopes() -> list[CallScope]:
    scopes = getattr(_THREAD, "scopes", None)
    if scopes is None:
        scopes = _THREAD.scopes = []
    return scopes


def current_scope(layer: SkipCollapseLayer) -> CallScope | None:
    """The scope of the model call `layer` runs in on this thread, or None outside any (a gradient-checkpointing
    recomputation in the backward pass, or a submodule called on its own)."""
    for scope in reversed(_open_scopes()):
        if scope.serves(layer):
            return scope
    return None


def _scoped_layers(root: nn.Module, names: Sequence[str] | None = None) -> list[SkipCollapseLayer]:
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


def _child(root: nn.Module, name: str) -> nn.Module | None:
    module: nn.Module | None = root
    for part in name.split("."):
        module = module._modules.get(part) if module is not None else None
    return module


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """The base model's own computation inside the block (measuring it), whatever adapters are on it; every layer's
    flag is restored afterwards."""
    layers = _scoped_layers(model)
    flags = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, flags):
            layer._disable_adapters = flag


def open_scope(
    root: nn.Module, names: Sequence[str] | None = None, token_mask: torch.Tensor | None = None
) -> CallScope:
    """Open a scope for one call of `root` on this thread, serving the SkipCollapse layers under `root`."""
    scope = CallScope(root, _scoped_layers(root, names), token_mask)
    scopes = _open_scopes()
    # A call of the same module object cannot be open below this one on this thread (models do not call themselves):
    # such a scope is one a KeyboardInterrupt left behind (torch runs always_call hooks on Exception only). Drop it.
    scopes[:] = [open_one for open_one in scopes if open_one.root is not root]
    scopes.append(scope)
    return scope


def close_scope(root: nn.Module, names: Sequence[str] | None = None) -> None:
    """End this thread's innermost scope of `root`: the skip and block ℓ's output are dropped with it."""
    scopes = _open_scopes()
    for index in range(len(scopes) - 1, -1, -1):
        if scopes[index].root is root:
            del scopes[index:]  # and any scope an interrupted inner call left above it
            return


@contextlib.contextmanager
def call_scope(
    root: nn.Module, names: Sequence[str] | None = None, token_mask: torch.Tensor | None = None
) -> Iterator[CallScope]:
    """One call's scope, for code that runs the model's modules itself (the prefix cache)."""
    scope = open_scope(root, names, token_mask)
    try:
        yield scope
    finally:
        close_scope(root, names)


def scope_pre_hook(
    root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], names: Sequence[str] | None = None
) -> None:
    """Forward pre-hook on the model root: each call of the model opens its own scope."""
    mask = _argument(root, "attention_mask", args, kwargs)
    mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None  # [B, T]: 1 real, 0 padding
    open_scope(root, names, mask)


def _argument(root: nn.Module, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Argument `name` of this call of `root`, whether passed by keyword or by position."""
    if name in kwargs or not args:
        return kwargs.get(name)
    position = _positions(type(root)).get(name)
    return args[position] if position is not None and position < len(args) else None


@functools.cache
def _positions(cls: type) -> dict[str, int]:
    """Positions of `cls.forward`'s parameters (read once per class)."""
    parameters = list(inspect.signature(cls.forward).parameters)[1:]  # without self
    return {name: i for i, name in enumerate(parameters)}


def scope_post_hook(
    root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, names: Sequence[str] | None = None
) -> None:
    """Forward hook on the model root (registered with ``always_call``): the call's scope ends with the call."""
    close_scope(root, names)


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden states of a block's output: the tensor itself, else the first tensor of its structure (a tuple,
    a nested tuple such as PVTv2's ``((hidden,), h, w)``, a ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    for leaf in pytree.tree_leaves(output):
        if isinstance(leaf, torch.Tensor):
            return leaf
    raise TypeError(f"cannot find the hidden states in a block output of type {type(output).__name__}")


class _TensorSlot:
    """Where a module's output has a tensor: either "the shape of the module's input" (most blocks keep it, whatever
    the batch, sequence length or image size), or a recorded shape with the batch axis (and, for token models, the
    token axis) marked, so a stand-in of the right shape can be made for another batch."""

    __slots__ = ("like_input", "shape", "dtype")

    def __init__(self, tensor: torch.Tensor, given: torch.Tensor | None, batch: int, tokens: int | None) -> None:
        self.like_input = given is not None and given.shape == tensor.shape and given.dtype == tensor.dtype
        marked: list[Any] = list(tensor.shape)
        if marked and marked[0] == batch:
            marked[0] = "batch"
        if tokens is not None and len(marked) > 1 and marked[1] == tokens:
            marked[1] = "tokens"
        self.shape, self.dtype = tuple(marked), tensor.dtype


OutputTemplate = tuple[pytree.TreeSpec, list[Any]]
"""A module's output structure, its tensors replaced by `_TensorSlot`s, recorded from one example call."""


def output_template(output: Any, given: Any, batch: int, tokens: int | None) -> OutputTemplate:
    """The structure of `output`, which a module returned for the positional inputs `given`."""
    leaves, spec = pytree.tree_flatten(output)
    first = next((a for a in pytree.tree_leaves(given) if isinstance(a, torch.Tensor)), None)
    return spec, [_TensorSlot(v, first, batch, tokens) if isinstance(v, torch.Tensor) else v for v in leaves]


def fill_template(template: OutputTemplate, given: torch.Tensor | None, hidden: torch.Tensor) -> Any:
    """`template`'s structure with stand-ins for its tensors: the module's own input `given` where the tensor had
    its shape, else zeros of the recorded shape (batch and token axes taken from `hidden`, block ℓ's hidden
    states), so model code that unpacks or reshapes them keeps working."""
    spec, leaves = template
    sizes = {"batch": hidden.shape[0], "tokens": hidden.shape[1] if hidden.dim() > 1 else 1}
    filled = []
    for leaf in leaves:
        if not isinstance(leaf, _TensorSlot):
            filled.append(leaf)
        elif leaf.like_input and given is not None:
            filled.append(given)
        else:
            filled.append(hidden.new_zeros([sizes.get(d, d) for d in leaf.shape], dtype=leaf.dtype))
    return pytree.tree_unflatten(filled, spec)


def pool(
    hidden: torch.Tensor, pooling: str, channels_last: bool = False, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Turn a block's hidden states into what the head takes: one vector per example, or per token (``per_token``).

    ``mean`` averages real tokens only when the call's [B, T] token mask fits the hidden states, so one example
    gives the same vector alone and in a padded batch. ``avg`` averages every axis but the batch and the feature
    axis: axis 1 for [B, C, H, W] maps, the last axis for channels-last maps [B, H, W, C] and tokens [B, T, D].
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "per_token":
        return hidden
    if pooling == "mean":
        if token_mask is not None and hidden.dim() == 3 and token_mask.shape[0] == hidden.shape[0]:
            if token_mask.shape[1] < hidden.shape[1]:  # the model padded the sequence itself (Longformer): not real
                token_mask = nn.functional.pad(token_mask, (0, hidden.shape[1] - token_mask.shape[1]))
            weights = token_mask[:, : hidden.shape[1]].to(hidden.device, hidden.dtype).unsqueeze(-1)
            return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
        return hidden.mean(dim=1)
    if pooling == "avg":
        if hidden.dim() <= 2:
            return hidden
        if channels_last:
            return hidden.flatten(1, -2).mean(dim=1)
        return hidden.flatten(2).mean(dim=-1)
    return hidden.flatten(1)


def _cast(value: Any, dtype: torch.dtype | None) -> Any:
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

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if name == "base_layer" or "base_layer" not in modules:
                raise
            return getattr(modules["base_layer"], name)

    def _active(self) -> str | None:
        """The adapter this layer runs now, or None when adapters are off or none of its adapters is active."""
        if self.disable_adapters:
            return None
        active = [a for a in self.active_adapters if a in self.fusion]
        if len(active) > 1:
            raise ValueError(
                f"SkipCollapse runs one adapter at a time, but {active} are active; use set_adapter(name)"
            )
        return active[0] if active else None

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(NO_MERGE)

    def unmerge(self) -> None:
        return None


class SkipSourceLayer(SkipCollapseLayer):
    """Block ℓ with, per adapter, an optional trainable copy of the block; hands its pooled output s to the head."""

    adapter_layer_names = ("skipcollapse_block",)
    other_param_names = ("train_source", "pooling", "channels_last", "fusion")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.skipcollapse_block = nn.ModuleDict()
        self.train_source: dict[str, str] = {}
        self.pooling: dict[str, str] = {}
        self.channels_last: dict[str, bool] = {}
        self.fusion: dict[str, str] = {}
        self.merged_adapters = []

    def update_layer(
        self, adapter_name: str, *, train_source: str, pooling: str, fusion: str, channels_last: bool = False
    ) -> None:
        if train_source != "none":
            self.skipcollapse_block[adapter_name] = _copy_module(self.base_layer)
        self.train_source[adapter_name] = train_source
        self.pooling[adapter_name] = pooling
        self.channels_last[adapter_name] = channels_last
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
        scope = current_scope(self)
        if scope is not None and scope.replaced:  # an earlier replace source ended this forward's path
            return scope.source_output
        adapter = self._active()
        if adapter is None:
            return self.base_layer(*args, **kwargs)
        if adapter in self.skipcollapse_block:
            block = self.skipcollapse_block[adapter]
            base_dtype = dtype_of(self.base_layer)
            output = _cast(block(*_cast(args, dtype_of(block)), **_cast(kwargs, dtype_of(block))), base_dtype)
        else:
            output = self.base_layer(*args, **kwargs)
        if scope is None:
            # Outside a model forward (a gradient-checkpointing recomputation of this block): only the output counts.
            return output
        hidden = first_tensor(output)
        scope.pooled = pool(hidden, self.pooling[adapter], self.channels_last.get(adapter, False), scope.token_mask)
        if self.fusion[adapter] == "replace":
            scope.source_output, scope.source_hidden, scope.replaced = output, hidden, True
        return output


class SkipGate(nn.Module):
    """g·x with a learned scalar g. A module (not a bare parameter) so that hooks which move weights at call time
    (accelerate's offloading) see it being called."""

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.to(x.dtype) * x


class SkipBypassLayer(SkipCollapseLayer):
    """A module after block ℓ that a ``replace`` adapter skips. Once a replace source has run in this call it
    returns, in place of its own output, the structure its module returns (a tensor, a tuple such as a Swin stage's
    ``(hidden, hidden_before_downsampling, sizes)``, a ModelOutput; recorded from one example call at injection)
    with block ℓ's hidden states in every tensor's place, so the model code that unpacks it keeps working; what
    those values are does not matter, since the head classifies P(s) alone. It runs its module otherwise (adapters
    off, another fusion, or a source later in the model)."""

    adapter_layer_names = ()
    other_param_names = ("fusion",)

    def __init__(self, base_layer: nn.Module, template: OutputTemplate | None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.template = template
        self.fusion: dict[str, str] = {}
        self.merged_adapters = []

    def update_layer(self, adapter_name: str) -> None:
        self.fusion[adapter_name] = "replace"
        self.set_adapter(self.active_adapters)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        scope = current_scope(self)
        if scope is not None and scope.replaced:
            if self.template is None:  # nothing was measured (no example batch): hand on block ℓ's output
                return scope.source_output
            given = next((a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)), None)
            return fill_template(self.template, given, scope.source_hidden)
        return self.base_layer(*args, **kwargs)


class SkipHeadLayer(SkipCollapseLayer):
    """The classifier's final linear layer, with per adapter the skip path (norm → P → g) from block ℓ's pooled
    output s, the fusion of the skip with the layer's input, and a trainable copy of the head."""

    adapter_layer_names = ("skipcollapse_head_copy", "skipcollapse_proj", "skipcollapse_gate")
    other_param_names = ("fusion", "_skip_norms")  # per-adapter dicts: peft's delete_adapter drops their entries

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        # The skip path first, then the head: the order the parameters reach optimizers and gradient clipping in.
        self.skipcollapse_proj = nn.ModuleDict()
        self.skipcollapse_gate = nn.ModuleDict()
        self.skipcollapse_head_copy = nn.ModuleDict()
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
            self.skipcollapse_gate[adapter_name] = SkipGate(device=device_of(base))
        if fusion == "concat":
            head = _linear_like(base.in_features + skip_dim, base.out_features, base, bias=base.bias is not None)
            with torch.no_grad():
                head.weight[:, : base.in_features].copy_(base.weight)
                if base.bias is not None:
                    head.bias.copy_(base.bias)
        else:
            head = copy.deepcopy(base)
        self.skipcollapse_head_copy[adapter_name] = head
        self.fusion[adapter_name] = fusion
        self._skip_norms[adapter_name] = skip_norm
        self.set_adapter(self.active_adapters)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._active()
        if adapter is None:
            return self.base_layer(x, *args, **kwargs)
        scope = current_scope(self)
        pooled = None if scope is None else scope.pooled
        if pooled is None:
            raise RuntimeError(
                "the SkipCollapse head ran without its source block's skip in this forward call; call the model "
                "itself (not its head or a submodule), which runs block ℓ before the head"
            )
        scope.pooled = None  # each call's skip is used once
        skip = self._skip(adapter, pooled, scope.root)
        head = self.skipcollapse_head_copy[adapter]
        fusion = self.fusion[adapter]
        if fusion == "replace":
            z = skip
        elif fusion == "concat":
            z = torch.cat([x, skip.to(x.dtype)], dim=-1)
        else:
            z = x + skip.to(x.dtype)
        return head(_cast(z, dtype_of(head)))

    def classifiers(self) -> list[nn.Module]:
        """Every module that may map the head input z to logits: the adapters' head copies and the frozen head
        (which runs when adapters are off). What `HeadInputs` hooks."""
        return [*self.skipcollapse_head_copy.values(), self.base_layer]

    def classifier(self, adapter: str | None) -> nn.Linear:
        """The linear layer that maps z to logits for `adapter` (its head copy), or the frozen head for None."""
        return self.skipcollapse_head_copy[adapter] if adapter is not None else self.base_layer

    def _skip(self, adapter: str, pooled: torch.Tensor, root: nn.Module) -> torch.Tensor:
        """g·P(norm(s)) for add/concat fusion, P(norm(s)) for replace."""
        norm_name = self._skip_norms.get(adapter)
        if norm_name:
            # unwrapped: under replace fusion the final norm sits after block ℓ and is wrapped to be bypassed
            pooled = _base(root.get_submodule(norm_name))(pooled)
        proj = self.skipcollapse_proj[adapter]
        if isinstance(proj, nn.Linear) and pooled.shape[-1] != proj.in_features:
            raise ValueError(
                f"the source block's pooled output has {pooled.shape[-1]} features in this call, but adapter "
                f"{adapter!r} was created for {proj.in_features} (measured on inputs of the size the model declared). "
                "The pooled width follows the input size (pooling='flatten' does): feed inputs of the size the "
                "adapter was created and trained with"
            )
        skip = proj(_cast(pooled, dtype_of(proj)))
        return skip if self.fusion[adapter] == "replace" else self.skipcollapse_gate[adapter](skip)


def _copy_module(module: nn.Module) -> nn.Module:
    """A deep copy of `module`. Tensors a module keeps outside its parameters and buffers that still hold an
    autograd graph (a cache filled in an earlier forward, as LeViT's attention-bias cache is) are copied without
    their graph: `copy.deepcopy` refuses such tensors."""
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for value in vars(sub).values():
            for item in value.values() if isinstance(value, dict) else [value]:
                if isinstance(item, torch.Tensor) and not item.is_leaf:
                    memo[id(item)] = item.detach().clone()
    return copy.deepcopy(module, memo)


def _base(module: nn.Module) -> nn.Module:
    """The module a peft layer wraps, or the module itself."""
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _linear_like(in_features: int, out_features: int, reference: nn.Module, bias: bool = True) -> nn.Linear:
    dtype = dtype_of(reference, torch.float32)
    return nn.Linear(in_features, out_features, bias=bias, device=device_of(reference), dtype=dtype)


def _freeze_all_but_norms_and_biases(block: nn.Module) -> None:
    for module in block.modules():
        is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if not (is_norm or name == "bias"):
                param.requires_grad = False
