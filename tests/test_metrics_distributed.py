"""A real 2-process (gloo, CPU) run: synced metrics over uneven shards equal the single-process ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from skipcollapse.collapse.metrics import collapse_metrics

sys.path.insert(0, str(Path(__file__).parent))
from _distributed_metrics_worker import NUM_CLASSES, dataset, shard  # noqa: E402

WORKER = Path(__file__).with_name("_distributed_metrics_worker.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist_metrics")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone runs a local rendezvous on a free port, so parallel test runs do not collide.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*launcher, str(WORKER), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout}\n{proc.stderr}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def expected() -> dict:
    features, labels, head = dataset()
    return collapse_metrics(features, labels, NUM_CLASSES, head_weight=head, logits=features @ head.T)


def close(got: dict, want: dict, keys=None) -> None:
    keys = keys or want.keys()
    for key in keys:
        assert abs(got[key] - want[key]) <= 1e-10 * max(1.0, abs(want[key])), (key, got[key], want[key])


def test_the_shards_are_uneven_and_rank1_misses_a_class(ranks):
    features, labels, _ = dataset()
    assert [r["world_size"] for r in ranks] == [2, 2]
    sizes = [r["num_local_samples"] for r in ranks]
    assert sizes[0] != sizes[1] and sum(sizes) == len(labels)
    assert sizes == [len(shard(0, labels)), len(shard(1, labels))]
    assert 3 not in ranks[1]["local_classes"] and 3 in ranks[0]["local_classes"]


def test_synced_metrics_equal_single_process(ranks, expected):
    without_nc4 = [k for k in expected if k != "nc4"]
    for r in ranks:
        assert set(r["first"]) == set(without_nc4)
        close(r["first"], expected, without_nc4)
        close(r["with_nc4"], expected)
    assert 0.0 < expected["nc4"] < 1.0


def test_compute_leaves_local_state_unchanged(ranks):
    features, labels, head = dataset()
    for rank, r in enumerate(ranks):
        assert r["state_unchanged"] is True
        assert r["again"] == r["first"]
        mine = shard(rank, labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rank 1's shard has an absent class
            local = collapse_metrics(features[mine], labels[mine], NUM_CLASSES, head_weight=head)
        close(r["local"], local)
        assert abs(r["local"]["nc1"] - r["first"]["nc1"]) > 1e-6  # sync changed the answer


def test_rank_without_data_takes_part(ranks, expected):
    for r in ranks:
        close(r["lonely"], expected, [k for k in expected if k != "nc4"])
        assert abs(r["lonely_nc4"] - expected["nc4"]) < 1e-12
