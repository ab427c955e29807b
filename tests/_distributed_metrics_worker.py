"""One rank of the 2-process NC-metrics check; launched by tests/test_metrics_distributed.py via torchrun.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 _distributed_metrics_worker.py OUT_DIR

Each rank writes OUT_DIR/rank{r}.json with its synced results and whether compute() left its local
state untouched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

NUM_CLASSES, WIDTH, SAMPLES = 5, 12, 437


def dataset() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed seeded data the test rebuilds too (features float32, as a model would give)."""
    g = torch.Generator().manual_seed(1234)
    centres = 2 * torch.randn(NUM_CLASSES, WIDTH, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (SAMPLES,), generator=g)
    features = centres[labels] + torch.randn(SAMPLES, WIDTH, generator=g)
    head = torch.randn(NUM_CLASSES, WIDTH, generator=g)
    return features, labels, head


def shard(rank: int, labels: torch.Tensor) -> torch.Tensor:
    """Uneven shards: rank 0 gets the first 100 samples plus every class-3 sample; rank 1 the rest,
    so rank 1 never sees class 3."""
    index = torch.arange(len(labels))
    to_rank0 = (index < 100) | (labels == 3)
    return index[to_rank0] if rank == 0 else index[~to_rank0]


def load_metrics_module():
    """Load skipcollapse/collapse/metrics.py without the package's ``__init__`` (metrics need only torch).

    Importing the package would also import peft and transformers (the package registers itself
    with peft), which dominates the wall time of these short-lived processes on a small CPU box.
    ``find_spec`` of the top-level package locates it without running its ``__init__``; empty package
    modules stand in for ``skipcollapse`` and ``skipcollapse.collapse`` so relative imports resolve.
    """
    import types

    root = Path(list(importlib.util.find_spec("skipcollapse").submodule_search_locations)[0])
    for name, path in (("skipcollapse", root), ("skipcollapse.collapse", root / "collapse")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules.setdefault(name, package)
    return importlib.import_module("skipcollapse.collapse.metrics")


def snapshot(metric) -> list[torch.Tensor]:
    return [t.clone() for t in (metric._counts, metric._sq_norms, metric._sums, metric._gram)]


def main(out_dir: str) -> None:
    CollapseMetrics = load_metrics_module().CollapseMetrics
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    features, labels, head = dataset()
    mine = shard(rank, labels)
    z, y = features[mine], labels[mine]

    metric = CollapseMetrics(NUM_CLASSES)
    for part_z, part_y in zip(torch.split(z, 64), torch.split(y, 64)):
        metric.update(part_z, part_y, logits=part_z @ head.T)
    before = snapshot(metric)
    first = metric.compute(head_weight=head)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, snapshot(metric)))
    again = metric.compute(head_weight=head)
    local = metric.compute(head_weight=head, sync=False)

    metric.begin_nc4_pass()
    for part_z in torch.split(z, 50):
        metric.nc4_update(part_z, part_z @ head.T)
    with_nc4 = metric.compute(head_weight=head)

    # A rank that sees no data at all (width unknown locally) still takes part in every collective.
    lonely = CollapseMetrics(NUM_CLASSES)
    if rank == 0:
        lonely.update(features, labels)
    lonely_result = lonely.compute(head_weight=head)
    lonely.begin_nc4_pass()
    if rank == 0:
        lonely.nc4_update(features, features @ head.T)
    lonely_nc4 = lonely.compute()["nc4"]

    result = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "num_local_samples": len(mine),
        "local_classes": sorted(set(y.tolist())),
        "first": first,
        "again": again,
        "local": local,
        "with_nc4": with_nc4,
        "state_unchanged": unchanged,
        "lonely": lonely_result,
        "lonely_nc4": lonely_nc4,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
