"""The peft tuner of SkipCollapse: resolves the config against a model and injects the two layers.

`get_peft_model(model, SkipCollapseConfig(...))` lands here. The tuner resolves a copy of the config against the
model (`architectures`), wraps the source block and the head (and, under ``replace`` fusion, what runs between
them) in the layers of `layer`, registers the two hooks that give each forward call its scope, and keeps frozen
BatchNorm statistics frozen in train mode.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .._torch_utils import dtype_of
from .architectures import (
    Architecture,
    candidates_message,
    default_source_block,
    discover,
    infer_output_width,
    norm_width,
)
from .batchnorm import frozen_batchnorms
from .config import SkipCollapseConfig
from .layer import (
    NO_MERGE,
    OutputTemplate,
    SkipBypassLayer,
    SkipCollapseLayer,
    SkipHeadLayer,
    SkipSourceLayer,
    _base,
    _child,
    adapters_off,
    call_scope,
    pool,
    scope_post_hook,
    scope_pre_hook,
)
from .measure import Measurement, channels_last, example_inputs, measure

_SEQ_CLS_ADDS = ("classifier", "score")  # what peft's sequence-classification model adds to modules_to_save

_OLD_HEAD_COPY = re.compile(r"(^|\.)skipcollapse_head\.")

# One adapter's entry in a per-adapter container ('...skipcollapse_block.default', '...modules_to_save.default').
_ADAPTER_ENTRY = re.compile(r"(^|\.)(skipcollapse_\w+|modules_to_save)\.[^.]+$")


class SkipCollapseModel(BaseTuner):
    """Skip-Connection Layer Fine-Tuning as a peft tuner. Create it with `peft.get_peft_model`."""

    prefix: str = "skipcollapse_"
    tuner_layer_cls = SkipCollapseLayer
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model: nn.Module, config: Any, adapter_name: str, **kwargs: Any) -> None:
        # The tuner's own state, before peft's __init__ injects the first adapter.
        self._bypass_plan: dict[tuple[Any, Any], dict[str, OutputTemplate | None]] = {}  # per (source, head)
        self._scoped_names: list[str] = []  # where the layers are, for the hooks that open and close each scope
        self._scope_hooks: list[Any] = []
        super().__init__(model, config, adapter_name, **kwargs)

    # ----------------------------------------------------------------------------------------- injection
    def _prepare_adapter_config(self, peft_config: SkipCollapseConfig, model_config: dict) -> SkipCollapseConfig:
        return peft_config  # resolved against the model itself in _prepare_model (peft passes no model here)

    def _prepare_model(self, peft_config: SkipCollapseConfig, model: nn.Module) -> None:
        """Resolve every `None` field of the config against `model` and validate the result.

        Runs before peft matches modules, so a bad name fails before the model is touched.
        """
        templates = _resolve_config(peft_config, model)
        self._bypass_plan[_plan_key(peft_config)] = templates

    def _check_target_module_exists(self, peft_config: SkipCollapseConfig, key: str) -> bool:
        return key in (peft_config.source_layer, peft_config.head_module) or key in self._bypassed(peft_config)

    def _bypassed(self, config: SkipCollapseConfig) -> dict[str, OutputTemplate | None]:
        """Under ``replace``: what the forward would run between block ℓ and the head, so that it does not run
        (name -> the structure its module returns), planned when the config was resolved."""
        if config.fusion != "replace":
            return {}
        return self._bypass_plan.get(_plan_key(config), {})

    def _create_and_replace(
        self,
        peft_config: SkipCollapseConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if current_key == peft_config.source_layer:
            layer = target
            if not isinstance(layer, SkipSourceLayer):
                layer = SkipSourceLayer(_base(target))
                self._replace_module(parent, target_name, layer, target)
            layer.update_layer(
                adapter_name,
                train_source=peft_config.train_source,
                pooling=peft_config.pooling,
                fusion=peft_config.fusion,
                channels_last=bool(peft_config.channels_last),
            )
        elif current_key == peft_config.head_module:
            layer = target
            if not isinstance(layer, SkipHeadLayer):
                layer = SkipHeadLayer(target)
                self._replace_module(parent, target_name, layer, target)
            layer.update_layer(
                adapter_name,
                fusion=peft_config.fusion,
                source_dim=peft_config.source_dim,
                skip_dim=_skip_width(peft_config, target),
                projection=peft_config.projection,
                skip_norm=peft_config.skip_norm or "",
            )
        elif isinstance(target, SkipBypassLayer):
            target.update_layer(adapter_name)
        elif not isinstance(target, SkipCollapseLayer):
            layer = SkipBypassLayer(target, template=self._bypassed(peft_config)[current_key])
            self._replace_module(parent, target_name, layer, target)
            layer.update_layer(adapter_name)
        # which adapter is active on the new layers is set by peft's inject_adapter right after this

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        # Resolve a copy: the config object the user passed stays as it was (but for SEQ_CLS, below), reusable.
        passed = self.peft_config[adapter_name]
        self.peft_config[adapter_name] = copy.deepcopy(passed)
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        kept = self.peft_config[adapter_name].modules_to_save or []
        if passed.task_type == "SEQ_CLS" and passed.modules_to_save:
            # peft's sequence-classification model adds "classifier" to the config it was given (only then) and, once
            # this tuner is built, wraps whatever that config lists; drop what resolution left out (it contains our
            # head or source block, which the adapter already trains), or that wrapper would hide the skip path.
            passed.modules_to_save = [name for name in passed.modules_to_save if name in kept]
        # Where the layers are, for the hooks that open and close each call's scope (updated in place, so hooks
        # registered for an earlier adapter see the layers of a later one too).
        names = self._scoped_names
        names[:] = [name for name, module in model.named_modules() if isinstance(module, SkipCollapseLayer)]
        if not self._scope_hooks:
            self._scope_hooks = [
                model.register_forward_pre_hook(functools.partial(scope_pre_hook, names=names), with_kwargs=True),
                model.register_forward_hook(
                    functools.partial(scope_post_hook, names=names), with_kwargs=True, always_call=True
                ),
            ]

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """peft keeps adapter weights of a bf16/fp16 base in float32; a block copy's BatchNorm statistics (buffers,
        which peft leaves alone) must follow its weights, or normalisation mixes dtypes."""
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        for layer in self.model.modules():
            if isinstance(layer, SkipSourceLayer) and adapter_name in layer.skipcollapse_block:
                block = layer.skipcollapse_block[adapter_name]
                dtype = dtype_of(block)
                for module in block.modules():
                    for name, buffer in module.named_buffers(recurse=False):
                        if dtype is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                            setattr(module, name, buffer.to(dtype))

    def call_scope(self, root: nn.Module | None = None, token_mask: torch.Tensor | None = None):
        """A context manager holding one call's scope, for code that runs this model's modules itself instead of
        calling the model (the prefix cache): what the model's own forward hooks open and close around each call."""
        return call_scope(self.model if root is None else root, self._scoped_names, token_mask)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # Call the model, not its .forward, so the hooks that open the call's scope run.
        return self.model(*args, **kwargs)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if isinstance(new_module, SkipCollapseLayer):
            super()._replace_module(parent, child_name, new_module, child)
        else:  # unloading: put the original block back as it was (peft's default assumes a weight-carrying layer)
            setattr(parent, child_name, new_module)

    def _unload_and_optionally_merge(self, *args: Any, **kwargs: Any) -> nn.Module:
        for handle in self._scope_hooks:
            handle.remove()
        self._scope_hooks = []
        return super()._unload_and_optionally_merge(*args, **kwargs)

    def train(self, mode: bool = True) -> SkipCollapseModel:
        """Train mode for everything that trains; frozen BatchNorm layers stay in eval mode.

        Which layers are frozen is `adapter.batchnorm.frozen_batchnorms`, the rule the comparison's baselines use too.
        """
        super().train(mode)
        if mode:
            trained = [
                name
                for name, module in self.model.named_modules()
                if _ADAPTER_ENTRY.search(name) and any(p.requires_grad for p in module.parameters())
            ]

            def trained_by_an_adapter(name: str) -> bool:  # a frozen (inference-mode) adapter's copy keeps its stats
                return any(name == entry or name.startswith(entry + ".") for entry in trained)

            for module in frozen_batchnorms(self.model, owned_by_adapter=trained_by_an_adapter):
                module.eval()
        return self

    # ----------------------------------------------------------------------------------------- peft plumbing
    def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
        raise ValueError(NO_MERGE)

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(NO_MERGE)

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(
            "SkipCollapse adapters cannot be combined by weights: each has its own source block, projection and "
            "head copy, and no weighted sum of two of them is an adapter. Switch between them with set_adapter, or "
            "train one adapter on the combined data"
        )

    def delete_adapter(self, adapter_name: str) -> None:
        was_active = adapter_name in self.active_adapters
        super().delete_adapter(adapter_name)
        if was_active and self.peft_config:
            # peft takes the next active adapter from the first tuner layer, which here may have held only the deleted
            # adapter (adapters wrap different blocks); activate the first remaining adapter on every layer instead.
            self.set_adapter(next(iter(self.peft_config)))

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) > 1:
            raise ValueError(f"SkipCollapse runs one adapter at a time; got {names}. Pass a single adapter name.")
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # Block copies nest the adapter name inside the key ('...skipcollapse_block.default.attn.weight'), which
        # peft's default only strips at the end; strip it right after our container's name instead.
        return re.sub(rf"(skipcollapse_\w+)\.{re.escape(adapter_name)}(?=\.|$)", r"\1", key)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: SkipCollapseConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Adapters saved by skipcollapse 0.1.0 kept the skip's projection and gate under block ℓ; they now live under
        the head (so FSDP can free block ℓ's weights after its forward). Their keys are moved there on loading, so
        those adapters load whole instead of coming back with a closed gate and a fresh projection. (The earliest
        files stored the gate as a bare parameter, '<block>.skipcollapse_gate', now the gate module's weight.)"""
        # Adapters saved before 0.2 named the head copies' container 'skipcollapse_head', a name that peft's
        # suffix matching of modules_to_save confused with a model's own module 'head' (ModernBERT's).
        state_dict = {
            _OLD_HEAD_COPY.sub(r"\1skipcollapse_head_copy.", key): value for key, value in state_dict.items()
        }
        if config.source_layer and config.head_module:
            source, head = re.escape(config.source_layer), config.head_module
            modules = re.compile(rf"(^|\.){source}\.(skipcollapse_(?:proj|gate))\.")
            bare_gate = re.compile(rf"(^|\.){source}\.skipcollapse_gate$")
            state_dict = {
                bare_gate.sub(rf"\g<1>{head}.skipcollapse_gate.weight", modules.sub(rf"\g<1>{head}.\2.", key)): value
                for key, value in state_dict.items()
            }
        return super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )


# --------------------------------------------------------------------------------------------- resolution
def _skip_width(config: SkipCollapseConfig, head: nn.Module) -> int:
    """Width of P(s): the head's input width, except for concat with identity P (the skip keeps its width)."""
    head = _base(head)
    if config.fusion == "concat" and config.projection == "identity":
        return config.source_dim
    return head.in_features


def _plan_key(config: SkipCollapseConfig) -> tuple[Any, Any]:
    return (config.source_layer, config.head_module)


def _resolve_config(config: SkipCollapseConfig, model: nn.Module) -> dict[str, OutputTemplate | None]:
    """Fill every `None` field of `config` from `model` and check it against one measured example forward.

    Returns, under ``replace``, what the adapter bypasses (name -> the structure its module returns)."""
    arch = discover(model)
    model_class = type(model).__name__
    loading = config.base_model_class is not None  # a resolved config: an adapter being loaded or re-applied
    if loading and config.base_model_class != model_class:
        raise ValueError(
            f"this SkipCollapse adapter was created for a {config.base_model_class}, but the model is a "
            f"{model_class}; load it onto the architecture it was trained on, or create a new SkipCollapseConfig "
            "for this model"
        )
    _require_names_for_unknown_model(config, model, arch)
    blocks = arch.blocks if arch else []
    if loading:
        _check_loaded_names(config, model)
    config.source_layer = _resolve_source(config.source_layer, model, blocks)
    config.head_module = config.head_module or arch.head
    head = _resolve_head(config.head_module, model)
    source = config.source_layer
    if (
        source == config.head_module
        or config.head_module.startswith(source + ".")
        or source.startswith(config.head_module + ".")
    ):
        raise ValueError(
            f"source_layer={source!r} and head_module={config.head_module!r} overlap: the skip must come from a "
            f"block before the head; choose one of the blocks: {candidates_message(model, source, blocks)}"
        )
    if loading:
        _check_loaded_classes(config, head)

    bypassed = _bypassed_modules(model, source, config.head_module, blocks) if config.fusion == "replace" else []
    inputs = example_inputs(model)
    templates: dict[str, OutputTemplate | None] = {name: None for name in bypassed}
    if inputs is None:  # nothing says what the model takes: the user's names and widths are trusted
        if config.pooling is None:
            raise ValueError(
                f"cannot build an example batch for {model_class} to measure its source block; set "
                "SkipCollapseConfig(pooling=...) (and source_dim=... if the block's width cannot be read off its "
                "layers)"
            )
        measured_width = None
    else:
        last_block = blocks[-1] if blocks else source
        with adapters_off(model):  # another adapter's replace fusion would hand the block a different output
            found = measure(model, inputs, source, config.head_module, last_block, bypassed)
        _check_runs_once(found, config, model, blocks)
        hidden = found.source_hidden
        if config.pooling is None:
            config.pooling = _default_pooling(hidden, found)
        if config.channels_last is None:
            config.channels_last = channels_last(hidden, _base(model.get_submodule(source)), model)
        _check_pooling(config, hidden, found, model_class)
        measured_width = pool(hidden, config.pooling, config.channels_last).shape[-1]
        templates.update(found.templates)
    if config.source_dim is not None and measured_width is not None and config.source_dim != measured_width:
        if loading:
            raise ValueError(
                _loading_mismatch(config, f"{source!r} gave {config.source_dim} features", f"{measured_width} there")
            )
        raise ValueError(
            f"source_dim={config.source_dim}, but {source!r} with pooling={config.pooling!r} gives {measured_width} "
            f"features (measured with an example batch); set source_dim={measured_width} or leave it unset"
        )
    if config.source_dim is None:
        config.source_dim = measured_width or infer_output_width(_base(model.get_submodule(source)))
        if config.source_dim is None:
            raise ValueError(
                f"cannot infer the width of {source!r}'s pooled output; set SkipCollapseConfig(source_dim=...)"
            )
    if config.channels_last is None:
        config.channels_last = False
    if config.skip_norm is None:
        final_norm = arch.final_norm if arch else ""
        fits = final_norm and norm_width(model.get_submodule(final_norm)) == config.source_dim
        config.skip_norm = final_norm if fits else ""
    if config.skip_norm:
        _require_module(model, config.skip_norm, "skip_norm", blocks)
    if config.projection == "auto":
        same = config.source_dim == head.in_features
        config.projection = "identity" if same or config.fusion == "concat" else "linear"
    if config.projection == "identity" and config.fusion != "concat" and config.source_dim != head.in_features:
        raise ValueError(
            f"projection='identity' needs equal widths, but {source!r} gives {config.source_dim} features and the "
            f"head {config.head_module!r} takes {head.in_features}; use projection='linear' (or 'auto'), or "
            "fusion='concat'"
        )
    config.modules_to_save = _modules_to_save(config, model, arch)
    config.base_model_class = model_class
    config.num_classes = head.out_features
    return templates


def _default_pooling(hidden: torch.Tensor, found: Measurement) -> str:
    """What the head would see of the source block, done the way the model does it to its last block."""
    if hidden.dim() > 3:
        return "avg"  # a map: average its spatial axes
    if hidden.dim() == 2:
        return "flatten"
    return found.classified if found.classified in ("cls", "mean", "per_token") else "mean"


def _check_runs_once(found: Measurement, config: SkipCollapseConfig, model: nn.Module, blocks: list[str]) -> None:
    source = config.source_layer
    if found.source_calls == 0:
        raise ValueError(
            f"source_layer={source!r} did not run in a forward pass of {type(model).__name__} on an example batch, "
            f"so it cannot feed the head; choose a block the forward runs: {candidates_message(model, source, blocks)}"
        )
    if found.source_after_head:
        raise ValueError(
            f"source_layer={source!r} runs after the head {config.head_module!r} in the forward pass; the skip must "
            f"come from a block before the head: {candidates_message(model, source, blocks)}"
        )
    if found.source_calls > 1:
        raise ValueError(
            f"source_layer={source!r} runs {found.source_calls} times in one forward pass of "
            f"{type(model).__name__}: its weights are shared across depth (as ALBERT's one layer is), so no single "
            "output of it is 'block ℓ', and a trained copy would replace it at every depth. SkipCollapse needs a "
            "block that runs once; for a model whose blocks all share weights, fine-tune it with LoRA instead"
        )


def _check_pooling(config: SkipCollapseConfig, hidden: torch.Tensor, found: Measurement, model_class: str) -> None:
    """The pooling fits the source block's output and the head's input; else say which would."""
    source, pooling, shape = config.source_layer, config.pooling, tuple(hidden.shape)
    per_token_head = found.head_input is not None and found.head_input.dim() == 3
    fits = {
        "cls": hidden.dim() == 3,
        "mean": hidden.dim() == 3,
        "per_token": hidden.dim() == 3 and per_token_head,
        "avg": hidden.dim() >= 3,
        "flatten": True,
    }[pooling]
    if fits and per_token_head and pooling != "per_token":
        fits = False
    if not fits:
        suggestion = "per_token" if per_token_head else _default_pooling(hidden, found)
        reason = (
            "the head runs on every token (the model picks the token it classifies after the head), so the skip must "
            "reach every token"
            if per_token_head
            else f"{source!r} outputs {shape}"
        )
        raise ValueError(
            f"pooling={pooling!r} does not fit {model_class}: {reason}; use pooling={suggestion!r} (or leave it unset "
            "to follow the model)"
        )
    if pooling == "per_token" and found.head_input.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"pooling='per_token' needs the source block's tokens to be the head's, but {source!r} outputs {shape} "
            f"and the head takes {tuple(found.head_input.shape)}"
        )


def _bypassed_modules(model: nn.Module, source: str, head: str, blocks: list[str]) -> list[str]:
    """Under ``replace``: the top-most modules with weights or buffers that the model registers after block ℓ
    (models register their modules in the order they run them), other than the head and its ancestors.
    Parameter-free modules (pooling, dropout, activations) are left alone: they work on any width and cost nothing."""
    block_set = set(blocks)
    chosen: list[str] = []
    after = False
    for name, module in model.named_modules():
        if name == source:
            after = True
            continue
        if not after or name.startswith(source + ".") or name == head or head.startswith(name + "."):
            continue
        if "skipcollapse_" in name or any(name.startswith(c + ".") for c in chosen):
            continue
        if isinstance(module, (SkipSourceLayer, SkipHeadLayer)):
            continue
        if next(module.parameters(), None) is None and next(module.buffers(), None) is None:
            continue
        if any(b.startswith(name + ".") for b in block_set) or isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            continue  # a container the forward iterates or a container of blocks: its members are wrapped one by one
        chosen.append(name)
    return chosen


def _loading_mismatch(config: SkipCollapseConfig, trained: str, here: str) -> str:
    return (
        f"this SkipCollapse adapter was trained on a {config.base_model_class} where {trained}; this model has "
        f"{here}. Load the adapter onto the base model it was trained on (same checkpoint and hidden size), or "
        "train a new adapter for this model"
    )


def _check_loaded_classes(config: SkipCollapseConfig, head: nn.Linear) -> None:
    """A saved adapter meets the base it is loaded onto: say which size differs and what to do, before peft's
    raw size-mismatch errors."""
    if config.num_classes is not None and head.out_features != config.num_classes:
        raise ValueError(
            f"this SkipCollapse adapter was trained for {config.num_classes} classes, but the head "
            f"{config.head_module!r} of this model has {head.out_features} outputs; load the base model with "
            f"num_labels={config.num_classes} (e.g. AutoModelFor...Classification.from_pretrained(name, "
            f"num_labels={config.num_classes}, ignore_mismatched_sizes=True)) before PeftModel.from_pretrained"
        )


def _check_loaded_names(config: SkipCollapseConfig, model: nn.Module) -> None:
    """The modules a saved adapter was trained on exist in this base; else it belongs to another checkpoint."""
    for field_name in ("source_layer", "head_module"):
        name = getattr(config, field_name)
        if isinstance(name, str) and _child(model, name) is None:
            raise ValueError(_loading_mismatch(config, f"{field_name} was {name!r}", "no such module"))


def _require_names_for_unknown_model(config: SkipCollapseConfig, model: nn.Module, arch: Architecture | None):
    if arch is not None:
        return
    missing = [
        name
        for name, ok in (
            ("source_layer (a module name)", isinstance(config.source_layer, str)),
            ("head_module", config.head_module is not None),
        )
        if not ok
    ]
    if missing:
        raise ValueError(
            f"SkipCollapse cannot find the blocks and the classifier head of {type(model).__name__}: it reads them "
            "from what timm (group_matcher, get_classifier) and transformers (its layer classes, config.num_labels, "
            "base_model_prefix) publish, and this model is neither or publishes neither; name the modules "
            "explicitly: "
            f"set {', '.join(missing)} in SkipCollapseConfig"
        )


def _resolve_source(source: str | int | None, model: nn.Module, blocks: list[str]) -> str:
    if source is None:
        return default_source_block(blocks)
    if isinstance(source, int):
        if not -len(blocks) <= source < len(blocks):
            raise ValueError(
                f"source_layer={source} is out of range: this model has {len(blocks)} blocks "
                f"(indices {-len(blocks)}..{len(blocks) - 1}): {candidates_message(model, '', blocks)}"
            )
        return blocks[source]
    _require_module(model, source, "source_layer", blocks)
    return source


def _resolve_head(name: str, model: nn.Module) -> nn.Linear:
    _require_module(model, name, "head_module", [], kind=nn.Linear)
    head = _base(model.get_submodule(name))
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"head_module={name!r} is a {type(head).__name__}, not the classifier's final nn.Linear; "
            f"{candidates_message(model, name, [], kind=nn.Linear)}"
        )
    return head


def _require_module(model: nn.Module, name: str, field: str, blocks: list[str], kind: type | None = None) -> None:
    if _child(model, name) is None:
        raise ValueError(
            f"{field}={name!r} is not a module of {type(model).__name__}; "
            f"{candidates_message(model, name, blocks, kind=kind)}"
        )


def _modules_to_save(config: SkipCollapseConfig, model: nn.Module, arch: Architecture | None) -> list[str]:
    """The family's extra trainable classifier modules plus the user's, without any that would wrap our layers.

    peft's sequence-classification model adds 'classifier' here; for SkipCollapse the head already trains (as a
    per-adapter copy), and wrapping it or an ancestor of it again would hide the skip path.
    """
    family = arch.modules_to_save if arch else []
    if config.fusion == "replace":
        family = []  # the head's input is P(s) alone: the family's classifier modules before the head get no gradient
    wanted = list(dict.fromkeys((config.modules_to_save or []) + family))
    ours = (config.source_layer, config.head_module)
    names = [name for name, _ in model.named_modules() if name]
    kept = []
    for entry in wanted:
        matched = [n for n in names if n == entry or n.endswith("." + entry)]
        if any(own == n or own.startswith(n + ".") for n in matched for own in ours):
            if not (config.task_type == "SEQ_CLS" and entry in _SEQ_CLS_ADDS):  # the user did not ask for these
                warnings.warn(
                    f"modules_to_save entry {entry!r} contains SkipCollapse's source block or head, which the adapter "
                    "already trains; it is left out",
                    stacklevel=3,
                )
            continue
        kept.append(entry)
    return kept
