"""FSDP2 (fully_shard) over two CPU processes: sharding the blocks of an adapted model, the source block included,
keeps the logits and trains the adapter. (Sharding the root PeftModel as well crashes inside autograd; README.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_fsdp_worker.py")


@pytest.mark.slow
def test_fully_sharded_blocks_keep_the_logits_and_train_the_adapter(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*launcher, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["max_diff"] < 1e-5 and result["grads"]
        assert result["moved"] == result["trainable"] > 0
