"""The peft tuner of SkipCollapse: resolves the config against a model and injects the two layers.

`get_peft_model(model, SkipCollapseConfig(...))` lands here. The tuner resolves a copy of the config against the
model (`architectures`), wraps the source block and the head (and, under ``replace`` fusion, what runs between
them) in the layers of `layer`, registers the two hooks that give each forward call its scope, and keeps frozen
BatchNorm statistics frozen in train mode.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .architectures import Architecture, candidates_message, discover, infer_output_width, measure_output_width
from .batchnorm import frozen_batchnorms
from .config import SkipCollapseConfig
from .layer import (
    NO_MERGE,
    SkipBypassLayer,
    SkipCollapseLayer,
    SkipHeadLayer,
    SkipSourceLayer,
    _base,
    _scoped_layers,
    scope_post_hook,
    scope_pre_hook,
)

_SEQ_CLS_ADDS = ("classifier", "score")  # what peft's sequence-classification model adds to modules_to_save

# One adapter's entry in a per-adapter container ('...skipcollapse_block.default', '...modules_to_save.default').
_ADAPTER_ENTRY = re.compile(r"(^|\.)(skipcollapse_\w+|modules_to_save)\.[^.]+$")


class SkipCollapseModel(BaseTuner):
    """Skip-Connection Layer Fine-Tuning as a peft tuner. Create it with `peft.get_peft_model`."""

    prefix: str = "skipcollapse_"
    tuner_layer_cls = SkipCollapseLayer
    target_module_mapping: dict[str, list[str]] = {}

    # ----------------------------------------------------------------------------------------- injection
    def _prepare_adapter_config(self, peft_config: SkipCollapseConfig, model_config: dict) -> SkipCollapseConfig:
        return peft_config  # resolved against the model itself in _prepare_model (peft passes no model here)

    def _prepare_model(self, peft_config: SkipCollapseConfig, model: nn.Module) -> None:
        """Resolve every `None` field of the config against `model` and validate the result.

        Runs before peft matches modules, so a bad name fails before the model is touched.
        """
        _resolve_config(peft_config, model)

    def _check_target_module_exists(self, peft_config: SkipCollapseConfig, key: str) -> bool:
        return key in (peft_config.source_layer, peft_config.head_module) or key in self._bypassed(peft_config)

    def _bypassed(self, config: SkipCollapseConfig) -> dict[str, bool]:
        """Under ``replace``: what the forward would run between block ℓ and the head, so that it does not run.

        These are the top-most modules with weights or buffers that the model registers after block ℓ (models
        register their modules in the order they run them), other than the head and its ancestors. Parameter-free
        modules (pooling, dropout, activations) are left alone: they work on any width and cost nothing.
        Returns name -> whether it is one of the model's blocks; computed once per injection.
        """
        if config.fusion != "replace":
            return {}
        key = (config.source_layer, config.head_module)
        cached = getattr(self, "_bypassed_cache", {}).get(key)
        if cached is not None:
            return cached
        source, head = key
        blocks = set(getattr(discover(self.model), "blocks", []))
        chosen: list[str] = []
        after = False
        for name, module in self.model.named_modules():
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
            if any(b.startswith(name + ".") for b in blocks) or isinstance(module, (nn.ModuleList, nn.ModuleDict)):
                continue  # a container the forward iterates or a container of blocks: its members are wrapped one by one
            chosen.append(name)
        self._bypassed_cache = {**getattr(self, "_bypassed_cache", {}), key: {n: n in blocks for n in chosen}}
        return self._bypassed_cache[key]

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
            layer = SkipBypassLayer(target, is_block=self._bypassed(peft_config)[current_key])
            self._replace_module(parent, target_name, layer, target)
            layer.update_layer(adapter_name)
        # which adapter is active on the new layers is set by peft's inject_adapter right after this

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        # Resolve a copy: the config object the user passed stays as it was (but for SEQ_CLS, below), reusable.
        passed = self.peft_config[adapter_name]
        self.peft_config[adapter_name] = copy.deepcopy(passed)
        self._bypassed_cache = {}
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        kept = self.peft_config[adapter_name].modules_to_save or []
        if passed.task_type == "SEQ_CLS" and passed.modules_to_save:
            # peft's sequence-classification model adds "classifier" to the config it was given (only then) and, once
            # this tuner is built, wraps whatever that config lists; drop what resolution left out (it contains our
            # head or source block, which the adapter already trains), or that wrapper would hide the skip path.
            passed.modules_to_save = [name for name in passed.modules_to_save if name in kept]
        # Where the layers are, for the hooks that open and close each call's scope (updated in place, so hooks
        # registered for an earlier adapter see the layers of a later one too).
        names = getattr(self, "_scoped_names", None)
        if names is None:
            names = self._scoped_names = []
        names[:] = [name for name, module in model.named_modules() if isinstance(module, SkipCollapseLayer)]
        if not getattr(self, "_scope_hooks", None):
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
                dtype = next((p.dtype for p in block.parameters() if p.is_floating_point()), None)
                for module in block.modules():
                    for name, buffer in module.named_buffers(recurse=False):
                        if dtype is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                            setattr(module, name, buffer.to(dtype))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # Call the model, not its .forward, so the hooks that open the call's scope run.
        return self.model(*args, **kwargs)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if isinstance(new_module, SkipCollapseLayer):
            super()._replace_module(parent, child_name, new_module, child)
        else:  # unloading: put the original block back as it was (peft's default assumes a weight-carrying layer)
            setattr(parent, child_name, new_module)

    def _unload_and_optionally_merge(self, *args: Any, **kwargs: Any) -> nn.Module:
        for handle in getattr(self, "_scope_hooks", None) or []:
            handle.remove()
        self._scope_hooks = []
        return super()._unload_and_optionally_merge(*args, **kwargs)

    def train(self, mode: bool = True) -> "SkipCollapseModel":
        """Train mode for everything that trains; frozen BatchNorm layers stay in eval mode.

        Which layers are frozen is `adapter.batchnorm.frozen_batchnorms`, the rule the comparison's baselines use too.
        """
        super().train(mode)
        if mode:
            trained = [
                name for name, module in self.model.named_modules()
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


def _resolve_config(config: SkipCollapseConfig, model: nn.Module) -> None:
    arch = discover(model)
    model_class = type(model).__name__
    if config.base_model_class is not None and config.base_model_class != model_class:
        raise ValueError(
            f"this SkipCollapse adapter was created for a {config.base_model_class}, but the model is a "
            f"{model_class}; load it onto the architecture it was trained on, or create a new SkipCollapseConfig "
            "for this model"
        )
    _require_names_for_unknown_model(config, model, arch)
    blocks = arch.blocks if arch else []

    config.source_layer = _resolve_source(config.source_layer, model, blocks)
    config.head_module = config.head_module or arch.head
    head = _resolve_head(config.head_module, model)
    source = config.source_layer
    if source == config.head_module or config.head_module.startswith(source + ".") or source.startswith(
        config.head_module + "."
    ):
        raise ValueError(
            f"source_layer={source!r} and head_module={config.head_module!r} overlap: the skip must come from a "
            f"block before the head; choose one of the blocks: {candidates_message(model, source, blocks)}"
        )
    config.pooling = config.pooling or arch.pooling
    if config.skip_norm is None:
        config.skip_norm = arch.skip_norm if arch else ""
    if config.skip_norm:
        _require_module(model, config.skip_norm, "skip_norm", blocks)

    loading = config.base_model_class is not None  # a resolved config: an adapter being loaded or re-applied
    if loading:
        _check_loaded_widths(config, model, arch, head)
    measured = None
    if not (arch and arch.hidden_size):
        with _adapters_off(model):  # another adapter's replace fusion would hand the block a different output
            measured = measure_output_width(model, source, config.pooling)
    if loading and config.source_dim is not None and measured is not None and config.source_dim != measured:
        raise ValueError(_loading_mismatch(config, f"{source!r} gives {config.source_dim} features", f"{measured}"))
    if config.source_dim is not None and measured is not None and config.source_dim != measured:
        raise ValueError(
            f"source_dim={config.source_dim}, but {source!r} with pooling={config.pooling!r} gives {measured} "
            f"features (measured with an example batch); set source_dim={measured} or leave it unset"
        )
    if config.source_dim is None:
        known = arch.hidden_size if arch else None
        config.source_dim = known or measured or infer_output_width(_base(model.get_submodule(source)))
        if config.source_dim is None:
            raise ValueError(
                f"cannot infer the width of {source!r}'s pooled output; set SkipCollapseConfig(source_dim=...)"
            )
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


@contextlib.contextmanager
def _adapters_off(model: nn.Module) -> Iterator[None]:
    """The base model's own computation while measuring, whatever adapters are already on it (flags restored)."""
    layers = _scoped_layers(model)
    flags = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, flags):
            layer._disable_adapters = flag


def _loading_mismatch(config: SkipCollapseConfig, trained: str, here: str) -> str:
    return (
        f"this SkipCollapse adapter was trained on a {config.base_model_class} where {trained}; this model has "
        f"{here}. Load the adapter onto the base model it was trained on (same checkpoint and hidden size), or "
        "train a new adapter for this model"
    )


def _check_loaded_widths(config: SkipCollapseConfig, model: nn.Module, arch: Optional[Architecture], head: nn.Linear):
    """A saved adapter meets the base it is loaded onto: say which size differs and what to do, before peft's
    raw size-mismatch errors."""
    if config.num_classes is not None and head.out_features != config.num_classes:
        raise ValueError(
            f"this SkipCollapse adapter was trained for {config.num_classes} classes, but the head "
            f"{config.head_module!r} of this model has {head.out_features} outputs; load the base model with "
            f"num_labels={config.num_classes} (e.g. AutoModelFor...Classification.from_pretrained(name, "
            f"num_labels={config.num_classes}, ignore_mismatched_sizes=True)) before PeftModel.from_pretrained"
        )
    known = arch.hidden_size if arch else None
    if known is not None and config.source_dim is not None and known != config.source_dim:
        raise ValueError(_loading_mismatch(config, f"the source block gives {config.source_dim} features",
                                           f"hidden size {known}"))


def _require_names_for_unknown_model(config: SkipCollapseConfig, model: nn.Module, arch: Optional[Architecture]):
    if arch is not None:
        return
    missing = [
        name
        for name, ok in (
            ("source_layer (a module name)", isinstance(config.source_layer, str)),
            ("head_module", config.head_module is not None),
            ("pooling", config.pooling is not None),
        )
        if not ok
    ]
    if missing:
        from .architectures import SUPPORTED_FAMILIES

        raise ValueError(
            f"SkipCollapse does not know the architecture of {type(model).__name__} (supported: "
            f"{', '.join(SUPPORTED_FAMILIES)}); name the modules explicitly: set {', '.join(missing)} in "
            "SkipCollapseConfig"
        )


def _resolve_source(source: Optional[str | int], model: nn.Module, blocks: list[str]) -> str:
    if source is None:
        return blocks[len(blocks) // 2]
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
    try:
        model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"{field}={name!r} is not a module of {type(model).__name__}; "
            f"{candidates_message(model, name, blocks, kind=kind)}"
        ) from None


def _modules_to_save(config: SkipCollapseConfig, model: nn.Module, arch: Optional[Architecture]) -> list[str]:
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
