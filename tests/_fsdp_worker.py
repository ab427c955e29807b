"""Run by tests/test_fsdp.py under torchrun (2 CPU processes, gloo): FSDP2 on an adapted model's blocks.

Writes rank<r>.json with the largest logit difference from the unsharded model and whether every trainable
parameter received a gradient and moved after one optimizer step.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import build, make_inputs  # noqa: E402

import skipcollapse  # noqa: E402
from peft import get_peft_model  # noqa: E402


def main(out: str) -> None:
    dist.init_process_group("gloo")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = get_peft_model(build("hf-bert"), skipcollapse.SkipCollapseConfig())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "skipcollapse_gate" in name:
                param.fill_(0.5)
    inputs = make_inputs("hf-bert")
    expected = model(**inputs).logits.detach().clone()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.get_base_model().bert.encoder.layer:  # the blocks, the source block's copy included
        fully_shard(layer, mesh=mesh)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out_ = model(**inputs)
    out_.loss.backward()
    grads = all(p.grad is not None for p in model.parameters() if p.requires_grad)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(_full(p), _full(trainable[n]))]
    result = {"max_diff": float((out_.logits.detach() - expected).abs().max()), "grads": grads,
              "moved": len(moved), "trainable": len(trainable)}
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    # Tearing down FSDP2's gloo process group can abort the process ("terminate called without an active exception",
    # seen once in CI); both ranks have written their results and met at the barrier, so leave without running the
    # process group's or the interpreter's C++ destructors.
    os._exit(0)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


if __name__ == "__main__":
    main(sys.argv[1])
