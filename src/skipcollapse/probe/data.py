"""How the probe reads data: datasets sharded over processes or loaders as given, batches split into inputs and
labels, features gathered across processes for the non-additive scores."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .._torch_utils import device_of, eval_mode, split_batch
from ..collapse.distributed import is_distributed, world
from ..collapse.features import shard_loader
from ..collapse.metrics import CollapseMetrics
from ..collapse.transferability import h_score, logme
from .report import METRIC_KEYS as _METRIC_KEYS

Data = Dataset | DataLoader | Iterable


# ------------------------------------------------------------------------------------------------ data
def _is_dataset(data: Any) -> bool:
    """Map-style data we can index and shard ourselves (torch or HF `datasets`), as opposed to a loader."""
    return not isinstance(data, DataLoader) and hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _make_loader(
    data: Data, batch_size: int, collate_fn: Callable | None, max_examples: int | None, seed: int
) -> tuple[Iterable, int | None]:
    """(batches of this process, a local cap on examples or None).

    A dataset is subsampled *globally* first (a seeded random subset of ``max_examples``: datasets are often
    sorted by class, and the first N would miss classes), then sharded over the processes. A loader is
    used as given -- sharding it is the caller's business -- and capped at ``max_examples`` per process.
    """
    if not _is_dataset(data):
        return data, max_examples
    if max_examples is not None and max_examples < len(data):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(data), generator=generator)[:max_examples].sort().values.tolist()
        data = Subset(data, keep)
    rank, world_size = world()
    return shard_loader(data, batch_size, collate_fn, rank, world_size), None


def _truncate(inputs: Any, labels: torch.Tensor, keep: int) -> tuple[Any, torch.Tensor]:
    def cut(value: Any) -> Any:
        return value[:keep] if isinstance(value, torch.Tensor) and value.dim() > 0 else value

    inputs = {k: cut(v) for k, v in inputs.items()} if isinstance(inputs, dict) else cut(inputs)
    return inputs, labels[:keep]


def _batches(
    model: nn.Module,
    data: Data,
    batch_size: int,
    collate_fn: Callable | None,
    max_examples: int | None,
    seed: int,
    progress: bool,
    desc: str,
) -> Iterable[tuple[Any, torch.Tensor]]:
    """Yield (inputs, labels) after running ``model`` on them once, in eval mode under no_grad.

    The caller reads whatever its hooks captured during that forward. Every module's own train/eval mode is
    restored at the end.
    """
    loader, cap = _make_loader(data, batch_size, collate_fn, max_examples, seed)
    device = device_of(model)
    rank, _ = world()
    total = len(loader) if hasattr(loader, "__len__") else None
    seen = 0
    with eval_mode(model):
        for batch in tqdm(loader, desc=desc, total=total, disable=not progress or rank != 0, leave=False):
            inputs, labels = split_batch(batch, device)
            if cap is not None:
                if seen >= cap:
                    break
                if seen + len(labels) > cap:
                    inputs, labels = _truncate(inputs, labels, cap - seen)
            seen += len(labels)
            with torch.no_grad():
                if isinstance(inputs, dict):
                    model(**inputs)
                else:
                    model(inputs)
            yield inputs, labels.to(device)


def _gather(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All processes' kept features and labels (the scores are not additive, unlike the NC statistics)."""
    if not is_distributed():
        return features, labels
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (features.cpu(), labels.cpu()))
    parts = [p for p in parts if len(p[1])] or parts[:1]  # ranks without data hold a placeholder width
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _transfer_scores(features: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[float, float]:
    z = torch.cat(features) if features else torch.zeros(0, 1)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    z, y = _gather(z, y)
    if len(y) == 0 or len(torch.unique(y)) < 2:
        return math.nan, math.nan
    return h_score(z, y), logme(z, y)


def _metric_values(metric: CollapseMetrics) -> tuple[dict[str, float], int | None, int]:
    """(metrics, width, examples) over all processes (collective: every rank calls it for every metric)."""
    synced = metric.sync()
    try:
        values = synced.compute(sync=False)
    except ValueError:  # no samples, one class, or all class means equal: report NaN rather than fail the probe
        values = {}
    return {k: values.get(k, math.nan) for k in _METRIC_KEYS}, synced.num_features, synced.num_samples
