"""Where this process stands in `torch.distributed`: the one place the package asks.

Every multi-process path (metric sync, the penalty's all-reduce, the probe's sharding, the comparison's writes)
reads rank and world size from here, so "not distributed" means the same thing everywhere: torch.distributed
unavailable, or no process group initialised.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def world(group: Any | None = None) -> tuple[int, int]:
    """(rank, world size) in `group` (the default group when None); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def is_distributed(group: Any | None = None) -> bool:
    """More than one process in `group`: collectives are needed."""
    return world(group)[1] > 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files."""
    return world()[0] == 0
