"""FSDP2 over two CPU processes (gloo): an adapted model sharded block by block plus its root, by hand and by
accelerate's FSDP2 preparation, computes the unsharded model's logits, takes the same optimizer step, and saves an
adapter that reloads onto an unsharded base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_fsdp_worker.py")


@pytest.mark.slow
def test_sharded_adapter_trains_like_the_unsharded_one(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*launcher, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(results) == 6  # bert add/replace, vit concat (skip norm = final norm) x by hand/accelerate
        for case, result in results.items():
            assert result["fsdp_modules"] >= 5, case  # the blocks and the root at least: the model is sharded
            assert result["same_names"] and result["moved"] == result["trainable"] > 0, case
            assert result["logit_diff"] < 1e-5 and result["param_diff"] < 1e-6, case
            if rank == 0:  # saved from the sharded model (full state dict on rank 0), reloaded unsharded
                assert result["reload_diff"] < 1e-5, case
