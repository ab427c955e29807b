"""Worker for the 2-process test in ``test_loss.py``: run with ``torchrun --nproc_per_node 2``.

Each rank takes half of a fixed global batch, computes the synced collapse penalty (and then the
full :class:`CollapseLoss`) under DDP with gloo, and back-propagates. Rank 0 writes both ranks'
loss values and the DDP-reduced gradients to the JSON file named by ``argv[1]``; the test compares
them with a single process on the global batch (``make_problem`` is shared with the test).
"""

from __future__ import annotations

import json
import sys

import torch
from torch import Tensor, nn

from skipcollapse.collapse.loss import CollapseLoss, collapse_penalty

# Rank 0 holds rows 0..5, rank 1 rows 6..11. Class 2 appears once on rank 0 and twice on rank 1,
# class 3 only on rank 1 (a single sample), and each rank has one ignored row.
LABELS = [0, 1, 0, 2, -100, 1, 3, 0, 1, 2, 2, -100]
LAMBDA = 0.5


class Net(nn.Module):
    """Feature layer plus head; returns ``(logits, features)`` like the adapted models do."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = nn.Linear(6, 4)
        self.head = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.tanh(self.feature(x))
        return self.head(z), z


def make_problem() -> tuple[Net, Tensor, Tensor]:
    """The same float64 model and global batch in every process."""
    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(0)
    net = Net().double()
    x = torch.randn(len(LABELS), 6, generator=gen, dtype=torch.float64) * 2 + 0.5
    return net, x, torch.tensor(LABELS)


def grads_of(module: nn.Module) -> dict[str, list]:
    return {name: p.grad.flatten().tolist() for name, p in module.named_parameters()}


def main(out_path: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    net, x, y = make_problem()
    rows = slice(rank * len(LABELS) // world, (rank + 1) * len(LABELS) // world)
    x_r, y_r = x[rows], y[rows]
    results: dict[str, dict] = {}

    # 1. Penalty only, num_classes inferred across ranks.
    ddp = nn.parallel.DistributedDataParallel(net.feature)
    loss = collapse_penalty(torch.tanh(ddp(x_r)), y_r, sync=True)
    loss.backward()
    results["penalty"] = {"loss": loss.item(), "grads": grads_of(net.feature)}
    del ddp
    net.zero_grad(set_to_none=True)

    # 2. The full loss: local cross-entropy (averaged by DDP) + lam * global penalty.
    ddp = nn.parallel.DistributedDataParallel(net)
    criterion = CollapseLoss(collapse_lambda=LAMBDA, num_classes=4)
    logits, z = ddp(x_r)
    loss, parts = criterion.loss_and_parts(logits, z, y_r)
    loss.backward()
    results["collapse_loss"] = {
        "loss": loss.item(),
        "penalty": parts["collapse_penalty"].item(),
        "grads": grads_of(net),
    }

    # 3. The parts CollapseLossFunc logs: item-weighted over both ranks, and every rank joins the all-reduce even
    #    when it recorded no part (rank 1 records no penalty in the first window and nothing in the second).
    from skipcollapse import CollapseLossFunc

    func = CollapseLossFunc(net, collapse_lambda=LAMBDA, num_classes=4, head_module="head")
    if rank == 0:
        func.add_to_step(torch.tensor(2), ce=torch.tensor(1.0), collapse_penalty=torch.tensor(3.0))
    else:
        func.add_to_step(torch.tensor(6), ce=torch.tensor(2.0))
    first = func.pop_parts()
    if rank == 0:
        func.add_to_step(torch.tensor(2), ce=torch.tensor(1.0))
    results["logged_parts"] = {"first": first, "second": func.pop_parts()}

    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, results)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
