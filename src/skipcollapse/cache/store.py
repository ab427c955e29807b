"""What a prefix cache holds (block ℓ's arguments, sorted into per-example, shared and constant values), how it is
written batch by batch into preallocated or file-backed tensors, and how an on-disk cache is read back and checked."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .._io import write_atomic
from .key import (
    KEY_CONFIG_FIELDS,
    _adapter_parts,
    _class_name,
    _config_key,
    _data_fingerprint,
    _trainable_prefix,
    _weights_fingerprint,
)

FORMAT = "skipcollapse-prefix-cache"


VERSION = 1


META_FILE = "meta.json"


SHARED_FILE = "shared.pt"


PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class _Slot:
    """One argument of the source block's call and how it is stored."""

    where: int | str  # positional index, or keyword name
    kind: str  # "example": one row per example; "shared": one tensor for all; "value": a non-tensor constant
    name: str  # storage name (a file stem on disk)


class PrefixCache:
    """The inputs of block ℓ for every example of a dataset, with the labels and the key that says what made them.

    Build it with `build_prefix_cache`, reopen an on-disk one with `PrefixCache.load`. Row ``i`` belongs to
    example ``i`` of the dataset it was built from.
    """

    def __init__(
        self,
        key: dict[str, Any],
        slots: list[_Slot],
        examples: dict[str, torch.Tensor],
        shared: dict[str, Any],
        labels: torch.Tensor,
        directory: Path | None = None,
    ) -> None:
        self.key = key
        self.slots = slots
        self._examples = examples
        self._shared = shared
        self.labels = labels
        self.directory = directory

    # ------------------------------------------------------------------------------------- contents
    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        where = f"on disk at {self.directory}" if self.directory else "in memory"
        return f"PrefixCache({len(self)} examples, inputs of {self.layer!r}, {self.nbytes / 2**20:.1f} MiB {where})"

    @property
    def layer(self) -> str:
        """The name of the source block whose inputs this cache holds."""
        return self.key["config"]["source_layer"]

    @property
    def nbytes(self) -> int:
        """Bytes of the per-example tensors and labels (what grows with the dataset)."""
        tensors = list(self._examples.values()) + [self.labels]
        return sum(t.numel() * t.element_size() for t in tensors)

    def inputs(
        self, index: torch.Tensor | Sequence[int], device: torch.device | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments of block ℓ for the examples at `index`, as the model passed them."""
        index = torch.as_tensor(index, dtype=torch.long)
        args: dict[int, Any] = {}
        kwargs: dict[str, Any] = {}
        for slot in self.slots:
            if slot.kind == "example":
                stored = self._examples[slot.name]
                value = stored[index.to(stored.device)]
            else:
                value = self._shared[slot.name]
            if device is not None and isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=True)
            if isinstance(slot.where, int):
                args[slot.where] = value
            else:
                kwargs[slot.where] = value
        return tuple(args[i] for i in range(len(args))), kwargs

    def dataset(self) -> CachedPrefixDataset:
        """What `CachedSkipModel` trains on: items ``{"cache_index": i, "labels": y_i}`` in the original order."""
        return CachedPrefixDataset(self.labels)

    def to(self, device: str | torch.device) -> PrefixCache:
        """A copy with every tensor on `device` (e.g. a GPU, so a batch's rows are gathered there)."""
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return PrefixCache(
            self.key,
            self.slots,
            {k: move(v) for k, v in self._examples.items()},
            {k: move(v) for k, v in self._shared.items()},
            move(self.labels),
            None,
        )

    # ------------------------------------------------------------------------------------- validity
    def check(self, peft_model: nn.Module, dataset: Dataset | None = None) -> None:
        """Raise `ValueError` unless this cache is what `peft_model`'s prefix would compute (over `dataset`).

        Checks the model class, the source layer, the prefix's weights and, when given, the data; the message names
        every one that differs and how to rebuild.
        """
        differences = self.differences(peft_model, dataset)
        if differences:
            raise ValueError(self._stale_message(differences))

    def differences(self, peft_model: nn.Module, dataset: Dataset | None = None) -> list[str]:
        """What differs between this cache's key and `peft_model` (and `dataset`), one line each; [] if nothing."""
        base, config = _adapter_parts(peft_model)
        found = []
        model_class = _class_name(base)
        if model_class != self.key["model_class"]:
            found.append(f"model: the cache was built on a {self.key['model_class']}, this model is a {model_class}")
        config_now = _config_key(config)
        if config_now["source_layer"] != self.layer:
            found.append(
                f"layer: the cache holds the inputs of {self.layer!r}, but the adapter's source_layer is "
                f"{config_now['source_layer']!r}"
            )
        other = [f for f in KEY_CONFIG_FIELDS if f != "source_layer" and config_now[f] != self.key["config"][f]]
        if other:
            cached = self.key["config"]
            found.append(
                "adapter config: " + ", ".join(f"{f}={config_now[f]!r} (cache: {cached[f]!r})" for f in other)
            )
        if not found:  # the prefix is only comparable on the same model and layer
            prefix = self.key["prefix"]
            try:
                fingerprint = _weights_fingerprint(base, prefix["modules"])
            except AttributeError as missing:
                found.append(f"model: {missing}")
            else:
                if fingerprint != prefix["fingerprint"]:
                    found.append(
                        f"prefix weights: the parameters/buffers of the {len(prefix['modules'])} modules that run "
                        f"before {self.layer!r} changed since the cache was built"
                    )
            trains = _trainable_prefix(base, prefix["modules"])
            if trains:
                found.append(f"prefix weights: modules before {self.layer!r} now train ({trains[:3]}), so they change")
        if dataset is not None:
            data = self.key["data"]
            length, fingerprint = _data_fingerprint(dataset)
            if (length, fingerprint) != (data["length"], data["fingerprint"]):
                what = (
                    f"{data['length']} examples, this dataset has {length}"
                    if length != data["length"]
                    else f"{length} examples and so does this dataset, but their contents differ"
                )
                found.append(f"data: the cache was built over {what}")
        return found

    def _stale_message(self, differences: list[str]) -> str:
        where = f"the prefix cache in {self.directory}" if self.directory else "this prefix cache"
        rebuild = (
            f"build_prefix_cache(peft_model, dataset, directory={str(self.directory)!r}, overwrite=True)"
            if self.directory
            else "build_prefix_cache(peft_model, dataset)"
        )
        lines = "\n".join(f"  - {d}" for d in differences)
        return (
            f"{where} does not match what the model's frozen prefix computes now:\n{lines}\n"
            f"Its stored inputs of {self.layer!r} would be stale. Rebuild it for this model and data: {rebuild}."
        )

    # ------------------------------------------------------------------------------------- on disk
    @classmethod
    def load(
        cls, directory: PathLike, peft_model: nn.Module | None = None, dataset: Dataset | None = None
    ) -> PrefixCache:
        """Open an on-disk cache (memory-mapped, nothing read yet); with `peft_model` (and `dataset`) check it first.

        Refuses, with a `ValueError` naming what changed, a cache whose key does not match the model and data.
        """
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{directory} holds no complete prefix cache (no {META_FILE}); build one with "
                f"build_prefix_cache(peft_model, dataset, directory={str(directory)!r})"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(
                f"{meta_path} is not a {FORMAT} version {VERSION} file (found {meta.get('format')!r} version "
                f"{meta.get('version')!r}); rebuild the cache with this version of skipcollapse"
            )
        n = meta["length"]
        slots = [_Slot(**s["slot"]) for s in meta["tensors"]]
        examples = {
            s["slot"]["name"]: _map_file(directory / f"{s['slot']['name']}.bin", (n, *s["shape"]), s["dtype"])
            for s in meta["tensors"]
            if s["slot"]["kind"] == "example"
        }
        labels = _map_file(directory / "labels.bin", (n, *meta["labels"]["shape"]), meta["labels"]["dtype"])
        shared_path = directory / SHARED_FILE
        shared = torch.load(shared_path, weights_only=True) if shared_path.is_file() else {}
        cache = cls(meta["key"], slots, examples, shared, labels, directory)
        if peft_model is not None:
            cache.check(peft_model, dataset)
        return cache


class CachedPrefixDataset(Dataset):
    """Indices into a `PrefixCache` with their labels: ``{"cache_index": i, "labels": y_i}``.

    Items are tiny, so data loading costs nothing, and index ``i`` is example ``i`` of the original dataset: a
    sampler seeded as for the original data visits the same examples in the same order.
    """

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"cache_index": index, "labels": self.labels[index]}


class _Store:
    """Collects block ℓ's arguments batch by batch into preallocated tensors (in memory or file-backed)."""

    def __init__(self, length: int, directory: Path | None) -> None:
        self.length = length
        self.directory = directory
        self.slots: list[_Slot] | None = None
        self.examples: dict[str, torch.Tensor] = {}
        self.shared: dict[str, Any] = {}
        self.labels: torch.Tensor | None = None
        self.filled = 0
        self.batch_size = 0

    def add(self, args: tuple[Any, ...], kwargs: dict[str, Any], labels: torch.Tensor) -> None:
        labels = torch.as_tensor(labels).detach().cpu()
        rows = len(labels)
        values = {**{i: a for i, a in enumerate(args)}, **kwargs}
        if self.slots is None:
            self._start(values, labels)
        names = [s.where for s in self.slots]
        if list(values) != names:
            raise ValueError(
                f"the source block was called with arguments {list(values)} in one batch and {names} in the first; "
                "the cache needs the same call for every batch"
            )
        for slot in self.slots:
            value = values[slot.where]
            if slot.kind == "example":
                tensor = value.detach()
                stored = self.examples[slot.name]
                if tensor.dim() == 0 or tensor.shape[0] != rows or tensor.shape[1:] != stored.shape[1:]:
                    raise ValueError(
                        f"argument {slot.where!r} of the source block has shape {tuple(tensor.shape)} in a batch of "
                        f"{rows}, but {tuple(stored.shape[1:])} per example before; the cache needs one fixed shape "
                        "per example (pad sequences to one length, e.g. DataCollatorWithPadding(tokenizer, "
                        "padding='max_length', max_length=...)), and if this argument is not per-example, a "
                        "batch_size that does not coincide with its first dimension"
                    )
                stored[self.filled : self.filled + rows].copy_(tensor)
            elif not _same(value, self.shared[slot.name]):
                raise ValueError(
                    f"argument {slot.where!r} of the source block differs between batches but has no per-example "
                    "first dimension, so the cache cannot store it per example"
                )
        self.labels[self.filled : self.filled + rows].copy_(labels)
        self.filled += rows

    def _start(self, values: dict[int | str, Any], labels: torch.Tensor) -> None:
        rows = len(labels)
        self.slots = []
        for where, value in values.items():
            name = f"arg{where}" if isinstance(where, int) else f"kw_{where}"
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
                self.examples[name] = self._allocate(name, (self.length, *value.shape[1:]), value.dtype)
                kind = "example"
            else:
                kind = "shared" if isinstance(value, torch.Tensor) else "value"
                self.shared[name] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
            self.slots.append(_Slot(where, kind, name))
        self.labels = self._allocate("labels", (self.length, *labels.shape[1:]), labels.dtype)

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if self.directory is None:
            return torch.empty(shape, dtype=dtype)
        numel = int(np.prod(shape))
        path = self.directory / f"{name}.bin"
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        free = _free_bytes(self.directory)
        if nbytes > free:
            raise ValueError(
                f"the prefix cache needs {nbytes / 2**20:.1f} MiB for {name} in {self.directory.parent}, but only "
                f"{free / 2**20:.1f} MiB are free; free space, pass another directory=, or build in memory"
            )
        with open(path, "wb") as handle:  # allocate now: a full disk fails here, not as a SIGBUS while writing
            try:
                os.posix_fallocate(handle.fileno(), 0, max(nbytes, 1))
            except OSError as error:
                raise ValueError(
                    f"cannot allocate {nbytes / 2**20:.1f} MiB for the prefix cache in {self.directory.parent} "
                    f"({error.strerror}); free space, pass another directory=, or build in memory"
                ) from None
        return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(shape)

    def finish(self, key: dict[str, Any]) -> PrefixCache:
        if self.filled != self.length:
            raise RuntimeError(f"the data loader gave {self.filled} examples for a dataset of {self.length}")
        cache = PrefixCache(key, self.slots, self.examples, self.shared, self.labels, self.directory)
        if self.directory is None:
            return cache
        if self.shared:
            try:
                torch.save(self.shared, self.directory / SHARED_FILE)
                torch.load(self.directory / SHARED_FILE, weights_only=True)
            except Exception as error:
                raise ValueError(
                    f"the source block takes arguments that cannot be stored on disk safely ({error}); build the "
                    "cache in memory (directory=None)"
                ) from error
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "length": self.length,
            "key": key,
            "tensors": [
                {
                    "slot": asdict(s),
                    **(
                        {"shape": list(self.examples[s.name].shape[1:]), "dtype": _dtype_name(self.examples[s.name])}
                        if s.kind == "example"
                        else {}
                    ),
                }
                for s in self.slots
            ],
            "labels": {"shape": list(self.labels.shape[1:]), "dtype": _dtype_name(self.labels)},
        }
        write_atomic(self.directory / META_FILE, json.dumps(meta, indent=1))  # the cache exists only once this lands
        return cache


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and torch.equal(a.detach().cpu(), b.detach().cpu())
        )
    try:
        return bool(a is b or a == b)
    except Exception:
        return False


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _map_file(path: Path, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """A read-only view of a raw tensor file: a private mapping, paged in only where rows are read."""
    numel = int(np.prod(shape))
    expected = numel * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    if not path.is_file() or path.stat().st_size != expected:
        raise ValueError(f"{path} is missing or truncated (expected {expected} bytes); rebuild the cache")
    return torch.from_file(str(path), shared=False, size=numel, dtype=getattr(torch, dtype)).view(shape)


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free
