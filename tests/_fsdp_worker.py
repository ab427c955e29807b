"""Run by tests/test_fsdp.py under torchrun (2 CPU processes, gloo): an adapted model sharded with FSDP2 trains
exactly like the unsharded model.

For each case (family, fusion) and each way of sharding it — `fully_shard` on every block and on the root
PeftModel, as the PyTorch docs do it, and accelerate's own FSDP2 preparation (`fsdp2_prepare_model`: transformer-
layer auto-wrap, the embeddings and the final norm in their own groups, then the root) — one SGD step runs on the
sharded model and on an unsharded twin with the same inputs on every rank, so the averaged gradients equal the
twin's. Writes rank<r>.json: per case, the largest logit difference, the largest difference of a trainable
parameter after the step, how many trainable parameters moved, how many modules FSDP manages, and (rank 0) how far
the adapter saved from the sharded model and reloaded onto a fresh base is from the twin.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from peft import get_peft_model  # noqa: E402
from tiny_models import build, make_inputs  # noqa: E402

import skipcollapse  # noqa: E402
from skipcollapse.adapter.architectures import discover  # noqa: E402

CASES = [("hf-bert", "add"), ("hf-bert", "replace"), ("hf-vit", "concat")]  # hf-vit: the skip norm is the final norm
# accelerate's transformer auto-wrap defaults to the model's _no_split_modules, which for BERT and ViT include the
# embeddings; accelerate 1.15 then shards the word/patch embeddings a second time and fails on the plain models too,
# so the layer classes are named, as a user's FSDP config does with fsdp_transformer_layer_cls_to_wrap.
LAYER_CLASSES = {"hf-bert": "BertLayer", "hf-vit": "ViTLayer"}
SHARDINGS = ("blocks_and_root", "accelerate")


def adapted(family: str, fusion: str) -> nn.Module:
    torch.manual_seed(0)
    model = get_peft_model(build(family), skipcollapse.SkipCollapseConfig(fusion=fusion))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "skipcollapse_gate" in name:
                param.fill_(0.5)  # g = 0 would hide a skip path that FSDP broke
    return model


def shard(model: nn.Module, family: str, how: str, accelerator) -> nn.Module:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.fsdp import fully_shard

    if how == "blocks_and_root":
        base = model.get_base_model()
        for name in discover(base).blocks:  # the source block's wrapper (with the adapter's copy) included
            fully_shard(base.get_submodule(name))
        fully_shard(model)
        return model
    # accelerate selects FSDP only on accelerator devices (on CPU, Accelerator(fsdp_plugin=...) ignores the plugin),
    # so the plugin the launcher would build is handed to its FSDP2 preparation directly.
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[LAYER_CLASSES[family]],
    )
    return fsdp2_prepare_model(accelerator, model)


def one_step(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.train()
    output = model(**inputs)
    output.loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    return output.logits.detach()


def saved_and_reloaded(model: nn.Module, family: str, twin: nn.Module, inputs: dict, folder: Path) -> float | None:
    """Save the sharded model's adapter as users of FSDP do (a full state dict gathered on rank 0, handed to
    save_pretrained), reload it onto a fresh base on rank 0 and return the largest eval-logit difference from the
    trained twin; None on the other ranks."""
    from peft import PeftModel
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    model.save_pretrained(folder, state_dict=state)
    reloaded = PeftModel.from_pretrained(build(family), folder).eval()
    with torch.no_grad():
        return float((reloaded(**inputs).logits - twin.eval()(**inputs).logits).abs().max())


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def main(out: str) -> None:
    from accelerate import Accelerator
    from torch.distributed.fsdp import FSDPModule

    accelerator = Accelerator(cpu=True)  # opens the gloo process group torchrun described
    results = {}
    for family, fusion in CASES:
        inputs = make_inputs(family)
        twin = adapted(family, fusion)
        before = {n: p.detach().clone() for n, p in twin.named_parameters() if p.requires_grad}
        expected_logits = one_step(twin, inputs)
        expected = {n: p.detach() for n, p in twin.named_parameters() if p.requires_grad}
        for how in SHARDINGS:
            model = shard(adapted(family, fusion), family, how, accelerator)
            logits = one_step(model, inputs)
            params = {n: full(p.detach()) for n, p in model.named_parameters() if p.requires_grad}
            results[f"{family}/{fusion}/{how}"] = {
                "reload_diff": saved_and_reloaded(model, family, twin, inputs, Path(out, f"{family}-{fusion}-{how}")),
                "logit_diff": float((logits - expected_logits).abs().max()),
                "param_diff": max(float((params[n] - expected[n]).abs().max()) for n in expected),
                "same_names": sorted(params) == sorted(expected),
                "moved": sum(not torch.equal(params[n], before[n]) for n in expected),
                "trainable": len(expected),
                "fsdp_modules": sum(isinstance(m, FSDPModule) for m in model.modules()),
            }
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    # Tearing down FSDP2's gloo process group can abort the process ("terminate called without an active exception",
    # seen once in CI); both ranks have written their results and met at the barrier, so leave without running the
    # process group's or the interpreter's C++ destructors.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
