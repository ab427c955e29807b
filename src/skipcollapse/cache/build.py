"""Building a prefix cache: one pass of the frozen prefix over the data in eval mode, block ℓ's arguments captured by
a forward pre-hook, every example read twice, and (on disk) a build in a temporary folder published by a rename
under a file lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._torch_utils import device_of, eval_mode, split_batch
from .key import (
    _adapter_parts,
    _class_name,
    _config_key,
    _refuse_trainable_prefix,
    _source_module,
    _TwiceRead,
    _warn_about_prefix_dropout,
    _weights_fingerprint,
)
from .store import META_FILE, PathLike, PrefixCache, _Store


def build_prefix_cache(
    peft_model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    directory: PathLike | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> PrefixCache:
    """Run the frozen prefix of `peft_model` once over `dataset` and keep what block ℓ receives.

    Args:
        peft_model: a PeftModel with an active SkipCollapse adapter; its `source_layer` is block ℓ.
        dataset: map-style, fixed examples (no random augmentation): dicts of model inputs with ``labels`` (as the
            Trainer consumes them) or ``label``, or ``(inputs, label)`` pairs (the rule of
            `skipcollapse._torch_utils.split_batch`).
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
    collate_fn: Callable[[list[Any]], Any] | None,
    target: Path | None,
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
    device = device_of(base)
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
        with eval_mode(peft_model), torch.no_grad():
            for number, batch in enumerate(batches):
                inputs, labels = split_batch(batch, device)
                captured.clear()
                recorder = (
                    _record_calls(base, source, prefix_modules, until=lambda: bool(captured))
                    if number == 0
                    else contextlib.nullcontext()
                )
                with recorder:
                    _call(base, inputs)
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


def _default_collate_for(item: Any) -> Callable[[list[Any]], Any]:
    if isinstance(item, Mapping):
        from transformers import default_data_collator

        return default_data_collator
    return torch.utils.data.default_collate


def _call(model: nn.Module, inputs: Any) -> Any:
    """`model` on the inputs `split_batch` returns: a dict as keyword arguments, anything else as the one argument."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


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
