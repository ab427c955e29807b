"""What a prefix cache is keyed to: the adapter (model class, source layer), the exact bytes of every module that
runs before block ℓ, and a hash of every example; and the checks on that prefix (frozen, no dropout)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..adapter.config import SkipCollapseConfig
from ..adapter.layer import SkipSourceLayer

KEY_CONFIG_FIELDS = ("base_model_class", "source_layer")
"""The adapter-config fields a cache depends on: which model, and whose block's inputs it holds."""


def _adapter_parts(peft_model: nn.Module) -> tuple[nn.Module, SkipCollapseConfig]:
    """The base model and the active adapter's (resolved) config."""
    configs = getattr(peft_model, "peft_config", None)
    if not isinstance(configs, Mapping) or not hasattr(peft_model, "get_base_model"):
        raise TypeError(
            f"expected a PeftModel with a SkipCollapse adapter (get_peft_model(model, SkipCollapseConfig())), got "
            f"{type(peft_model).__name__}"
        )
    config = configs[peft_model.active_adapter]
    if not isinstance(config, SkipCollapseConfig):
        raise TypeError(f"the active adapter is a {type(config).__name__}, not a SkipCollapse adapter")
    return peft_model.get_base_model(), config


def _source_module(base: nn.Module, config: SkipCollapseConfig) -> SkipSourceLayer:
    source = base.get_submodule(config.source_layer)
    if not isinstance(source, SkipSourceLayer):
        raise TypeError(f"{config.source_layer!r} is a {type(source).__name__}, not SkipCollapse's source layer")
    return source


def _class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _config_key(config: SkipCollapseConfig) -> dict[str, Any]:
    return {field: getattr(config, field) for field in KEY_CONFIG_FIELDS}


def _own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return sorted(own, key=lambda item: item[0])


def _weights_fingerprint(base: nn.Module, names: list[str]) -> str:
    """SHA-256 over the exact bytes of the parameters and buffers each prefix module owns (not its children's:
    those are prefix modules of their own when they run before the block). A few ms per million parameters."""
    digest = hashlib.sha256()
    for name in names:
        try:
            module = base.get_submodule(name)
        except AttributeError:
            raise AttributeError(f"the module {name!r} that ran before the source block no longer exists") from None
        for tensor_name, tensor in _own_tensors(module):
            digest.update(f"{name}.{tensor_name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _trainable_prefix(base: nn.Module, names: list[str]) -> list[str]:
    found = []
    for name in names:
        try:
            module = base.get_submodule(name)
        except AttributeError:
            continue
        found += [f"{name}.{p}" if name else p for p, t in module.named_parameters(recurse=False) if t.requires_grad]
    return found


def _refuse_trainable_prefix(base: nn.Module, names: list[str], source: str) -> None:
    trains = _trainable_prefix(base, names)
    if trains:
        raise ValueError(
            f"parameters that run before {source!r} train ({trains[:5]}{' ...' if len(trains) > 5 else ''}): the "
            "prefix is not frozen, so its cached outputs would be stale after the first optimizer step. Freeze them "
            "(drop them from modules_to_save) or train without the cache."
        )


def _warn_about_prefix_dropout(base: nn.Module, names: list[str], source: str) -> None:
    noisy = []
    for name in names:
        module = base.get_submodule(name)
        rate = getattr(module, "p", None) if isinstance(module, nn.modules.dropout._DropoutNd) else None
        rate = rate if rate is not None else getattr(module, "drop_prob", None)  # timm DropPath
        if rate:
            noisy.append(name)
    if noisy:
        warnings.warn(
            f"modules before {source!r} apply dropout/stochastic depth in train mode ({noisy[:3]}"
            f"{' ...' if len(noisy) > 3 else ''}); the cache holds their eval-mode outputs, so training from it "
            "equals training without it only with that dropout off",
            stacklevel=3,
        )


class _TwiceRead(Dataset):
    """`dataset`, each example read twice and compared (random augmentation is refused, however rare), and hashed
    in index order, so the cache's data key covers every example's inputs and labels."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.hashes: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        first, second = _example_hash(item), _example_hash(self.dataset[index])
        if first != second:
            raise ValueError(_augmentation_message([index]))
        self.hashes[index] = first
        return item

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for index in range(len(self.dataset)):
            digest.update(self.hashes[index])
        return digest.hexdigest()


def _augmentation_message(changed: list[int]) -> str:
    return (
        f"the dataset returns different values for the same example on different reads (examples {changed}): "
        "random augmentation. Cached prefix outputs would be stale, because they are computed once while the "
        "inputs change every epoch. Either drop augmentation for cached training (e.g. a dataset without random "
        "transforms), or train without the cache."
    )


def _data_fingerprint(dataset: Dataset) -> tuple[int, str]:
    """(length, SHA-256 over the hash of every example in order): what `build_prefix_cache` recorded."""
    digest = hashlib.sha256()
    for index in range(len(dataset)):
        digest.update(_example_hash(dataset[index]))
    return len(dataset), digest.hexdigest()


def _example_hash(example: Any) -> bytes:
    digest = hashlib.sha256()
    _update(digest, example)
    return digest.digest()


def _update(digest: hashlib._Hash, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(f"tensor:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(_tensor_bytes(value))
    elif isinstance(value, np.ndarray):
        digest.update(f"ndarray:{value.dtype}:{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            digest.update(f"key:{key}".encode())
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"seq:{len(value)}".encode())
        for item in value:
            _update(digest, item)
    elif hasattr(value, "tobytes"):  # PIL images and the like
        digest.update(type(value).__name__.encode())
        digest.update(value.tobytes())
    else:
        digest.update(repr(value).encode())
