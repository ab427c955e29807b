"""Cache the frozen prefix: run blocks 1..ℓ-1 once, then train SCL-FT from what block ℓ receives.

Everything before the source block ℓ is frozen, so on a fixed (un-augmented) training set its outputs are the same
every epoch. Recomputing them each epoch is most of an SCL-FT epoch on a CNN (the early, high-resolution blocks
cost the most), so `build_prefix_cache` runs the model once, in eval mode without gradients (a plain forward to
its end: nothing is stopped early by an exception), and stores the
*inputs of block ℓ*: every tensor argument the model passes to the block (hidden states, and e.g. a BERT
attention mask), concatenated over examples, plus the labels. `CachedSkipModel` then trains the very modules of
the PeftModel from those inputs:

    cache = build_prefix_cache(peft_model, train_set)             # one pass over the data, no gradients
    model = CachedSkipModel(peft_model, cache)                    # shares peft_model's modules
    Trainer(model=model, train_dataset=cache.dataset(), ...).train()
    model.save_pretrained("adapter")                              # = peft_model.save_pretrained

What the cache stores, and where. Block ℓ's arguments are sorted, from the first batch, into three kinds: a
tensor with one row per example (stored, ``[N, ...]``), a tensor that is the same for every batch (stored once),
and a non-tensor value such as ``None`` or a flag (stored once). In memory, each per-example argument is one
preallocated tensor. With ``directory=``, each is a raw file mapped with ``torch.from_file`` (written through a
shared mapping while building; read through a private, lazily paged mapping), so a cache larger than RAM works,
every torch dtype (bfloat16 included, which numpy's memmap lacks) round-trips bit for bit, and only the rows a
batch asks for are read. ``meta.json`` (the key, shapes and dtypes) is written last, so an interrupted build
leaves no cache that could be mistaken for a complete one.

When a cache is stale. A cache is keyed to what produced it: the base model's class, the source layer, the
adapter-config fields that bear on block ℓ's inputs (`KEY_CONFIG_FIELDS`), a SHA-256 over the parameters and
buffers of every module that runs before block ℓ (recorded while building), and the data (its length and a hash
of every example, inputs and labels, taken while building; checking a cache against a dataset reads it once). `PrefixCache.check` names whatever differs and says how to rebuild; loading
from a directory whose key differs refuses. The other config fields (fusion, pooling, projection, what of the
block trains) act after the cached point, so one cache serves add, concat and replace adapters on the same layer.
Data whose examples change from one access to the next (random augmentation) is refused outright: the build
reads every example twice and compares. On disk, a cache is built in a temporary folder beside the target and
published by one rename, under a file lock: a second builder of the same folder waits, then reuses the finished
cache; an interrupted build leaves nothing that looks like a cache. The files are allocated before they are
mapped, so a full disk is a clear error, not a SIGBUS.

When training from the cache equals training without it. With the same initial adapter, seed and batch order,
the numbers match to float tolerance (different batchings of the build pass may change the last bits of the
prefix's convolutions). Two things in the uncached run would break equality, both documented here rather than
hidden: dropout or stochastic depth *in the prefix* (in train mode it perturbs the block's input each step, while
the cache holds eval-mode outputs; `build_prefix_cache` warns when it finds any), and a prefix that trains
(refused). Frozen BatchNorm is in eval mode in both runs (the adapter keeps it so), and the tuned block copy sees
exactly the same batches, so its batch statistics match. Dropout after block ℓ runs in both runs alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers.modeling_outputs import SequenceClassifierOutput

from ._io import write_atomic
from .adapter.architectures import FAMILIES_WITH_SUFFIX, discover
from .adapter.suffix import SuffixRunner, blocks_then_head_input
from .integrations.timm import TimmImageClassifier
from .adapter.config import SkipCollapseConfig
from .adapter.layer import SkipSourceLayer, _device_of, close_scope, open_scope

__all__ = [
    "CACHED_SUFFIX_FAMILIES",
    "KEY_CONFIG_FIELDS",
    "CachedPrefixDataset",
    "CachedSkipModel",
    "PrefixCache",
    "build_prefix_cache",
    "suffix_runner",
]

FORMAT = "skipcollapse-prefix-cache"
VERSION = 1
META_FILE = "meta.json"
SHARED_FILE = "shared.pt"

KEY_CONFIG_FIELDS = ("base_model_class", "source_layer")
"""The adapter-config fields a cache depends on: which model, and whose block's inputs it holds."""


PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class _Slot:
    """One argument of the source block's call and how it is stored."""

    where: Union[int, str]  # positional index, or keyword name
    kind: str  # "example": one row per example; "shared": one tensor for all; "value": a non-tensor constant
    name: str  # storage name (a file stem on disk)


# ============================================================================================ the cache
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
        directory: Optional[Path] = None,
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
        return (
            f"PrefixCache({len(self)} examples, inputs of {self.layer!r}, {self.nbytes / 2**20:.1f} MiB {where})"
        )

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
        self, index: Union[torch.Tensor, Sequence[int]], device: Optional[torch.device] = None
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

    def dataset(self) -> "CachedPrefixDataset":
        """What `CachedSkipModel` trains on: items ``{"cache_index": i, "labels": y_i}`` in the original order."""
        return CachedPrefixDataset(self.labels)

    def to(self, device: Union[str, torch.device]) -> "PrefixCache":
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
    def check(self, peft_model: nn.Module, dataset: Optional[Dataset] = None) -> None:
        """Raise `ValueError` unless this cache is what `peft_model`'s prefix would compute (over `dataset`).

        Checks the model class, the source layer, the prefix's weights and, when given, the data; the message names
        every one that differs and how to rebuild.
        """
        differences = self.differences(peft_model, dataset)
        if differences:
            raise ValueError(self._stale_message(differences))

    def differences(self, peft_model: nn.Module, dataset: Optional[Dataset] = None) -> list[str]:
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
            found.append("adapter config: " + ", ".join(f"{f}={config_now[f]!r} (cache: {cached[f]!r})" for f in other))
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
        cls, directory: PathLike, peft_model: Optional[nn.Module] = None, dataset: Optional[Dataset] = None
    ) -> "PrefixCache":
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


# ============================================================================================ building
def build_prefix_cache(
    peft_model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    collate_fn: Optional[Callable[[list[Any]], Any]] = None,
    directory: Optional[PathLike] = None,
    progress: bool = False,
    overwrite: bool = False,
) -> PrefixCache:
    """Run the frozen prefix of `peft_model` once over `dataset` and keep what block ℓ receives.

    Args:
        peft_model: a PeftModel with an active SkipCollapse adapter; its `source_layer` is block ℓ.
        dataset: map-style, fixed examples (no random augmentation): dicts of model inputs with ``labels``
            (as the Trainer consumes them), or ``(inputs..., label)`` tuples.
        batch_size: examples per prefix forward pass (memory only; it does not change what is stored).
        collate_fn: how items become a batch; default: transformers' `default_data_collator` for dict items,
            torch's `default_collate` otherwise. Sequences must come out padded to one fixed length.
        directory: store the cache there (memory-mapped files) instead of in memory. If it already holds a cache
            with the same key, that cache is reused without running anything.
        progress: show a progress bar.
        overwrite: replace a cache with another key in `directory` instead of refusing.

    The model's train/eval modes are restored afterwards; its weights are not touched.
    """
    base, config = _adapter_parts(peft_model)
    _source_module(base, config)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty; there is nothing to cache")
    if directory is None:
        return _build(peft_model, dataset, batch_size, collate_fn, None, progress)
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target):  # a concurrent builder of the same folder waits here, then reuses what we built
        if (target / META_FILE).is_file():
            existing = PrefixCache.load(target)
            differences = existing.differences(peft_model, dataset)
            if not differences:
                return existing
            if not overwrite:
                lines = "\n".join(f"  - {d}" for d in differences)
                raise ValueError(
                    f"{target} already holds a prefix cache for another model, layer or data:\n{lines}\n"
                    "Refusing to load it (its inputs would be stale) or to replace it silently: pass overwrite=True "
                    "to rebuild it there, or choose another directory."
                )
        building = target.parent / f".{target.name}.building-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        try:
            _build(peft_model, dataset, batch_size, collate_fn, building, progress)
            _publish(building, target)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return PrefixCache.load(target)


def _publish(building: Path, target: Path) -> None:
    """Swap a finished build into place with renames; a cache already mapped elsewhere keeps its (unlinked) files."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.rename(target, old)
    os.rename(building, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(
    peft_model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    collate_fn: Optional[Callable[[list[Any]], Any]],
    target: Optional[Path],
    progress: bool,
) -> PrefixCache:
    """One pass of the prefix over `dataset`, reading each example twice (augmentation check) and hashing it."""
    base, config = _adapter_parts(peft_model)
    source = _source_module(base, config)
    length = len(dataset)
    checked = _TwiceRead(dataset)

    if collate_fn is None:
        collate_fn = _default_collate_for(dataset[0])
    loader = DataLoader(checked, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    device = _device_of(base)
    store = _Store(length, target)
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not captured:  # the first call of block ℓ in this forward; the forward then runs to its end as usual
            captured.append((args, kwargs))

    batches: Iterator[Any] = iter(loader)
    if progress:
        from tqdm.auto import tqdm

        batches = iter(tqdm(loader, desc=f"caching inputs of {config.source_layer}", unit="batch"))

    handle = source.register_forward_pre_hook(capture, with_kwargs=True)
    prefix_modules: list[str] = []
    try:
        with _all_eval(peft_model), torch.no_grad():
            for number, batch in enumerate(batches):
                inputs, labels = _split_batch(batch)
                captured.clear()
                recorder = (
                    _record_calls(base, source, prefix_modules, until=lambda: bool(captured))
                    if number == 0
                    else contextlib.nullcontext()
                )
                with recorder:
                    _call(base, inputs, device)
                if not captured:
                    raise RuntimeError(
                        f"the model's forward finished without calling {config.source_layer!r}; the cache needs a "
                        "forward that passes through the source block"
                    )
                if number == 0:
                    _refuse_trainable_prefix(base, prefix_modules, config.source_layer)
                args, kwargs = captured[0]
                store.add(args, kwargs, labels)
    finally:
        handle.remove()

    _warn_about_prefix_dropout(base, prefix_modules, config.source_layer)
    key = {
        "model_class": _class_name(base),
        "config": _config_key(config),
        "prefix": {"modules": prefix_modules, "fingerprint": _weights_fingerprint(base, prefix_modules)},
        "data": {"length": length, "fingerprint": checked.fingerprint()},
    }
    return store.finish(key)


class _Store:
    """Collects block ℓ's arguments batch by batch into preallocated tensors (in memory or file-backed)."""

    def __init__(self, length: int, directory: Optional[Path]) -> None:
        self.length = length
        self.directory = directory
        self.slots: Optional[list[_Slot]] = None
        self.examples: dict[str, torch.Tensor] = {}
        self.shared: dict[str, Any] = {}
        self.labels: Optional[torch.Tensor] = None
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
                        "padding='max_length', max_length=...)), and if this argument is not per-example, a batch_size "
                        "that does not coincide with its first dimension"
                    )
                stored[self.filled : self.filled + rows].copy_(tensor)
            elif not _same(value, self.shared[slot.name]):
                raise ValueError(
                    f"argument {slot.where!r} of the source block differs between batches but has no per-example "
                    "first dimension, so the cache cannot store it per example"
                )
        self.labels[self.filled : self.filled + rows].copy_(labels)
        self.filled += rows

    def _start(self, values: dict[Union[int, str], Any], labels: torch.Tensor) -> None:
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


# ============================================================================================ training
class CachedSkipModel(nn.Module):
    """`peft_model` trained from a `PrefixCache`: the same modules, minus the frozen prefix's work.

    `forward(cache_index, labels=None)` feeds the cached inputs of block ℓ into the real `SkipSourceLayer` (the
    adapter's block copy and pooling, and the head's projection and gate, are `peft_model`'s own), then

    - ``replace`` fusion: the head classifies the skip P(s); nothing after ℓ runs;
    - ``add``/``concat``: the frozen blocks after ℓ run from block ℓ's output to the head input h_L (a per-family
      `suffix_runner`), and the head layer fuses h_L with the skip as in the uncached forward.

    Like the model's own forward, each call opens a scope for the skip (`skipcollapse.adapter.layer.open_scope`)
    and closes it when the call ends.

    It returns `SequenceClassifierOutput(loss, logits)`, so the Trainer and plain `accelerate` loops use it like
    any classifier, on `cache.dataset()`. It holds `peft_model` as a submodule, so `.to()`, `.train()`,
    `.parameters()` and optimizers act on the same tensors, and saving goes through `peft_model`
    (`save_pretrained` here delegates): an adapter trained from the cache loads like any other.
    """

    accepts_loss_kwargs = False  # the loss is a plain batch mean; the Trainer must not pass num_items_in_batch

    def __init__(self, peft_model: nn.Module, cache: PrefixCache) -> None:
        super().__init__()
        cache.check(peft_model)
        self.peft_model = peft_model
        self.cache = cache
        base, config = _adapter_parts(peft_model)
        self._suffix: Optional[SuffixRunner] = None
        if config.fusion != "replace":
            self._suffix = suffix_runner(base, config.source_layer)

    def forward(self, cache_index: torch.Tensor, labels: Optional[torch.Tensor] = None) -> SequenceClassifierOutput:
        base, config = _adapter_parts(self.peft_model)
        if config.source_layer != self.cache.layer:
            raise ValueError(
                f"the active adapter's source_layer is {config.source_layer!r}, but the cache holds the inputs of "
                f"{self.cache.layer!r}; activate the adapter the cache was built for, or build a cache for this one"
            )
        source = base.get_submodule(config.source_layer)
        head = base.get_submodule(config.head_module)
        args, kwargs = self.cache.inputs(cache_index.cpu(), device=_device_of(base))
        scope = open_scope(base)  # this call's scope, as the model's own forward hooks would open it
        try:
            output = source(*args, **kwargs)
            if scope.replaced:  # replace fusion: nothing after ℓ runs; the head classifies P(s), not its input
                logits = head(scope.pooled)
            else:  # add/concat fusion, or adapters disabled
                if self._suffix is None:
                    self._suffix = suffix_runner(base, config.source_layer)
                logits = head(self._suffix(output, args, kwargs))
        finally:
            close_scope(base)
        loss = None if labels is None else _classification_loss(base, logits, labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def dataset(self) -> CachedPrefixDataset:
        """The training set to pair with this model: `cache.dataset()`."""
        return self.cache.dataset()

    @property
    def base_model(self) -> nn.Module:
        """The SkipCollapse tuner, so the collapse tools (`HeadInputs`, callbacks, losses) work on this model."""
        return self.peft_model.base_model

    @property
    def peft_config(self) -> dict[str, Any]:
        return self.peft_model.peft_config

    @property
    def active_adapter(self) -> str:
        return self.peft_model.active_adapter

    def get_base_model(self) -> nn.Module:
        return self.peft_model.get_base_model()

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        """Save the adapter exactly as `peft_model.save_pretrained` does (the cache is not part of it)."""
        self.peft_model.save_pretrained(*args, **kwargs)


# ============================================================================================ suffix runners
CACHED_SUFFIX_FAMILIES = FAMILIES_WITH_SUFFIX
"""Families whose blocks after ℓ `CachedSkipModel` can run from a cache (needed by add/concat fusion)."""


def suffix_runner(base: nn.Module, source_layer: str) -> SuffixRunner:
    """How to run `base` from block ℓ's output to its head's input h_L, for the families that have one.

    The prefix is skipped, so the model's own forward cannot be used: the blocks after ℓ run in the family table's
    order, then the family's ``head_input`` (`adapter/suffix.py`, named by the table in `adapter/architectures.py`).
    """
    arch = discover(base)
    family = arch.family if arch is not None else type(base).__name__
    runner = None
    if arch is not None and arch.head_input is not None:
        runner = blocks_then_head_input(base, arch.blocks, source_layer, arch.head_input)
    if runner is None:
        raise NotImplementedError(
            f"training from a prefix cache with fusion='add' or 'concat' runs the blocks after the source block from "
            f"its output, which is implemented for {', '.join(CACHED_SUFFIX_FAMILIES)} (source layer: one of their "
            f"blocks), not for {family} with source layer {source_layer!r}. Use SkipCollapseConfig(fusion='replace') "
            "(the blocks after the source do not run at all, so no suffix is needed), or train without the cache."
        )
    return runner


# ============================================================================================ helpers
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


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _map_file(path: Path, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """A read-only view of a raw tensor file: a private mapping, paged in only where rows are read."""
    numel = int(np.prod(shape))
    expected = numel * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    if not path.is_file() or path.stat().st_size != expected:
        raise ValueError(f"{path} is missing or truncated (expected {expected} bytes); rebuild the cache")
    return torch.from_file(str(path), shared=False, size=numel, dtype=getattr(torch, dtype)).view(shape)


def _default_collate_for(item: Any) -> Callable[[list[Any]], Any]:
    if isinstance(item, Mapping):
        from transformers import default_data_collator

        return default_data_collator
    return torch.utils.data.default_collate


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """(model inputs, labels) of a collated batch: a dict with 'labels'/'label', or (inputs..., labels)."""
    if isinstance(batch, Mapping):
        key = "labels" if "labels" in batch else "label" if "label" in batch else None
        if key is None:
            raise ValueError(f"the dataset's items carry no 'labels' (keys: {sorted(batch)}); the cache stores labels")
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return tuple(batch[:-1]), batch[-1]
    raise TypeError(f"cannot find inputs and labels in a batch of type {type(batch).__name__}")


def _call(model: nn.Module, inputs: Any, device: torch.device) -> Any:
    move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
    if isinstance(inputs, Mapping):
        return model(**{k: move(v) for k, v in inputs.items()})
    return model(*(move(v) for v in inputs))


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


@contextlib.contextmanager
def _all_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode for every module during the build, then each module's own mode back."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def _record_calls(base: nn.Module, source: nn.Module, names: list[str], until: Callable[[], bool]) -> Iterator[None]:
    """Append to `names` every module of `base` entered before `source` (the prefix, its containers included):
    recording stops once `until()` says the source has been reached."""
    inside_source = {id(m) for m in source.modules()}
    handles = []

    def record(module: nn.Module, args: Any, name: str) -> None:
        if not until():
            names.append(name)

    for name, module in base.named_modules():
        if id(module) in inside_source:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: record(m, a, n)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        unique = list(dict.fromkeys(names))
        names[:] = unique


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


# -------------------------------------------------------------------------------------------- data keys
def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


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


def _update(digest: "hashlib._Hash", value: Any) -> None:
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


def _classification_loss(base: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss the uncached forward computes: the transformers model's own loss, else `TimmImageClassifier`'s."""
    from transformers import PreTrainedModel

    if isinstance(base, PreTrainedModel):
        return base.loss_function(labels, logits, base.config)
    return TimmImageClassifier.output_from_logits(logits, labels).loss
