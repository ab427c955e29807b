"""Tests for the collapse-aware loss: exact values, invariances, accumulation and 2-process DDP."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from skipcollapse.collapse.loss import CollapseLoss, collapse_penalty

WORKER = Path(__file__).with_name("_distributed_loss_worker.py")


def reference_penalty(z: torch.Tensor, y: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """tr(Σ_W)/tr(Σ_B) by explicit loops, straight from the definition (two-pass, no tricks)."""
    rows = [i for i in range(len(y)) if int(y[i]) != ignore_index]
    classes = sorted({int(y[i]) for i in rows})
    if len(classes) < 2:
        return z.new_zeros(())
    means = {}
    for k in classes:
        members = [z[i] for i in rows if int(y[i]) == k]
        means[k] = sum(members) / len(members)
    within = sum(((z[i] - means[int(y[i])]) ** 2).sum() for i in rows) / len(rows)
    grand = sum(means.values()) / len(classes)
    between = sum(((means[k] - grand) ** 2).sum() for k in classes) / len(classes)
    return within / between


def random_batch(seed: int, n: int = 24, d: int = 5, k: int = 4, offset: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64) + offset
    y = torch.randint(0, k, (n,), generator=gen)
    return z, y


# --- values ---------------------------------------------------------------------------------


def test_hand_computed_value():
    # Class 0 at 0 and 2, class 1 at 10 and 12: within = 1, means 1 and 11, between = 25.
    z = torch.tensor([[0.0], [2.0], [10.0], [12.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    assert collapse_penalty(z, y).item() == pytest.approx(0.04, abs=1e-15)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_matches_reference_value_and_gradient(seed, offset):
    z, y = random_batch(seed, offset=offset)
    y[3] = -100
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    ours = collapse_penalty(z1, y)
    ref = reference_penalty(z2, y)
    assert abs(ours.item() - ref.item()) <= 1e-10 * max(1.0, abs(ref.item()))
    ours.backward()
    ref.backward()
    assert torch.allclose(z1.grad, z2.grad, rtol=1e-8, atol=1e-10)


def test_single_sample_class_counts_for_means_only():
    z, y = random_batch(7, n=9, k=3)
    y[:] = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 0])  # class 2 has one sample
    assert abs(collapse_penalty(z, y).item() - reference_penalty(z, y).item()) < 1e-10


def test_absent_classes_and_explicit_num_classes_do_not_matter():
    z, y = random_batch(3, k=3)
    assert abs(collapse_penalty(z, y, num_classes=10) - collapse_penalty(z, y)).item() < 1e-14


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exactly_zero_when_collapsed_positive_otherwise(dtype):
    gen = torch.Generator().manual_seed(0)
    means = (torch.randn(3, 6, generator=gen) * 3.1 + 0.7).to(dtype)  # not dyadic numbers
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 1, 0])
    z = means[y].clone()
    assert collapse_penalty(z, y).item() == 0.0
    z[4, 2] += 1e-3
    assert collapse_penalty(z, y).item() > 0.0


def test_scale_invariance():
    z, y = random_batch(11)
    assert abs(collapse_penalty(z, y) - collapse_penalty(7.3 * z, y)).item() < 1e-12


def test_width_invariance_duplicated_columns():
    z, y = random_batch(12)
    wide = torch.cat([z, z], dim=1)
    assert abs(collapse_penalty(z, y) - collapse_penalty(wide, y)).item() < 1e-12


@pytest.mark.parametrize("labels", [[2, 2, 2, 2], [-100, 1, -100, 1], [-100] * 4])
def test_fewer_than_two_classes_is_zero_with_grad_path(labels):
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    p = collapse_penalty(z, torch.tensor(labels))
    assert p.item() == 0.0
    assert p.requires_grad
    p.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_ignored_rows_are_excluded():
    z, y = random_batch(5)
    y[[1, 6, 10]] = -100
    keep = y != -100
    base = collapse_penalty(z, y)
    assert abs(base - collapse_penalty(z[keep], y[keep])).item() < 1e-14
    z_changed = z.clone()
    z_changed[~keep] = 1e6
    assert collapse_penalty(z_changed, y).item() == base.item()


# --- CollapseLoss -----------------------------------------------------------------------------


def test_lam_zero_is_exactly_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=gen)
    feats = torch.randn(16, 8, generator=gen)
    y = torch.randint(0, 5, (16,), generator=gen)
    y[2] = -100
    crit = CollapseLoss(collapse_lambda=0.0)
    assert torch.equal(crit(logits, feats, y), F.cross_entropy(logits, y))
    assert math.isnan(crit.loss_and_parts(logits, feats, y)[1]["collapse_penalty"])  # not computed


def test_loss_is_ce_plus_lambda_penalty_and_logs_parts():
    z, y = random_batch(2, d=6)
    y[0] = -100
    logits = torch.randn(len(y), 4, dtype=torch.float64)
    crit = CollapseLoss(collapse_lambda=0.3, label_smoothing=0.1)
    loss = crit(logits, z, y)
    ce = F.cross_entropy(logits, y, label_smoothing=0.1)
    pen = reference_penalty(z, y)
    assert abs(loss.item() - (ce + 0.3 * pen).item()) < 1e-12
    same, parts = crit.loss_and_parts(logits, z, y)
    assert torch.equal(same, loss)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx({"ce": ce.item(), "collapse_penalty": pen.item()})
    assert all(not v.requires_grad for v in parts.values())  # detached, still on the loss's device


# --- gradient accumulation --------------------------------------------------------------------


def _linear_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    feat, head = torch.nn.Linear(5, 4).double(), torch.nn.Linear(4, 3).double()
    x = torch.randn(24, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=gen)
    return feat, head, x, y


def _grads(*modules):
    return torch.cat([p.grad.flatten() for m in modules for p in m.parameters()])


def _accumulated_grads(lam: float, micro: int):
    """HF-Trainer style: backward(loss_m / M) on each micro-batch, gradients summed."""
    feat, head, x, y = _linear_problem()
    crit = CollapseLoss(collapse_lambda=lam)
    for xm, ym in zip(x.chunk(micro), y.chunk(micro)):
        z = feat(xm)
        (crit(head(z), z, ym) / micro).backward()
    return _grads(feat, head)


def test_accumulation_equals_full_batch_for_ce_only():
    feat, head, x, y = _linear_problem()
    z = feat(x)
    CollapseLoss(collapse_lambda=0.0)(head(z), z, y).backward()
    assert torch.allclose(_accumulated_grads(0.0, micro=4), _grads(feat, head), rtol=0, atol=1e-14)


def test_accumulation_with_penalty_is_mean_of_micro_batch_losses():
    lam, micro = 0.7, 4
    feat, head, x, y = _linear_problem()
    crit = CollapseLoss(collapse_lambda=lam)
    objective = 0
    for xm, ym in zip(x.chunk(micro), y.chunk(micro)):
        z = feat(xm)
        objective = objective + crit(head(z), z, ym)
    (objective / micro).backward()  # one graph: d/dθ of the mean of micro-batch losses
    accumulated = _accumulated_grads(lam, micro)
    assert torch.allclose(accumulated, _grads(feat, head), rtol=0, atol=1e-14)

    # ...which is not the full-batch penalty: the ratio of batch statistics is not additive.
    feat, head, x, y = _linear_problem()
    z = feat(x)
    crit(head(z), z, y).backward()
    assert (accumulated - _grads(feat, head)).abs().max() > 1e-4


# --- two processes, gloo, DDP -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_worker():
    spec = importlib.util.spec_from_file_location("_distributed_loss_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)
def test_two_process_ddp_matches_single_process_global_batch(tmp_path):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(WORKER), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert len(ranks) == 2

    worker = _load_worker()

    # Single process, global batch: penalty only.
    net, x, y = worker.make_problem()
    penalty = collapse_penalty(torch.tanh(net.feature(x)), y)
    penalty.backward()
    ref_grads = {n: p.grad.flatten() for n, p in net.feature.named_parameters()}
    for rank in ranks:  # every rank computed the global value and holds the global gradient
        assert abs(rank["penalty"]["loss"] - penalty.item()) < 1e-10
        for name, g in rank["penalty"]["grads"].items():
            got = torch.tensor(g, dtype=torch.float64)
            assert torch.allclose(got, ref_grads[name], rtol=0, atol=1e-10), name

    # Single process, global batch: the full loss. Each rank's loss is its local CE plus the
    # global penalty, so compare the penalty part and the (DDP-averaged) gradients.
    net, x, y = worker.make_problem()
    crit = CollapseLoss(collapse_lambda=worker.LAMBDA, num_classes=4)
    logits, z = net(x)
    loss, parts = crit.loss_and_parts(logits, z, y)
    loss.backward()
    ref_grads = {n: p.grad.flatten() for n, p in net.named_parameters()}
    penalty = parts["collapse_penalty"].item()
    assert penalty > 0.01  # the penalty really contributes
    for rank in ranks:
        assert abs(rank["collapse_loss"]["penalty"] - penalty) < 1e-10
        for name, g in rank["collapse_loss"]["grads"].items():
            got = torch.tensor(g, dtype=torch.float64)
            assert torch.allclose(got, ref_grads[name], rtol=0, atol=1e-10), name

    # The logged parts: (2·1 + 6·2)/8 for ce, rank 0's penalty alone, and no hang when a rank recorded nothing.
    for rank in ranks:
        assert rank["logged_parts"]["first"] == pytest.approx({"ce": 1.75, "collapse_penalty": 3.0})
        assert rank["logged_parts"]["second"] == pytest.approx({"ce": 1.0})


@pytest.mark.parametrize(
    "labels,message",
    [
        (torch.tensor([0, 1, 5, 1]), r"integers in \[0, 3\).*\[5\]"),
        (torch.tensor([0.0, 1.0, 2.0, 1.0]), "integer dtype"),
    ],
)
def test_penalty_refuses_labels_that_are_not_class_ids(labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        collapse_penalty(torch.randn(4, 3), labels, num_classes=3)


def test_penalty_refuses_nan_features_instead_of_returning_nan() -> None:
    z = torch.randn(4, 3)
    z[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in 1 of 4 rows"):
        collapse_penalty(z, torch.tensor([0, 1, 0, 1]))
    assert torch.isfinite(collapse_penalty(torch.randn(4, 3), torch.tensor([0, 1, -100, 1])))  # ignore_index is fine


# --- CollapseLoss checks its labels like the penalty and the metrics ----------------------------


def _logits_features_labels(n: int = 8, k: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen, dtype=torch.float64, requires_grad=True)
    features = torch.randn(n, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    return logits, features, torch.arange(n) % k


@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_loss_accepts_any_integer_label_dtype(lam: float, dtype: torch.dtype) -> None:
    logits, features, labels = _logits_features_labels()
    crit = CollapseLoss(collapse_lambda=lam, label_smoothing=0.1)
    expected = crit(logits, features, labels)
    assert torch.equal(crit(logits, features, labels.to(dtype)), expected)
    assert torch.equal(crit(logits, features, labels.to(dtype), torch.tensor(16)), crit(logits, features, labels, 16))


@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.parametrize(
    "labels,message",
    [
        (torch.arange(8)[:, None] % 3, r"1-D tensor \[N\].*\(8, 1\).*squeeze"),
        (torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]), r"integers in \[0, 3\).*\[3\]"),
        (torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0]), "integer dtype"),
        (torch.tensor([0, 1, 2, 0]), "4 rows but .* 8"),
    ],
)
def test_loss_refuses_labels_that_are_not_class_ids_of_the_logits(lam: float, labels, message: str) -> None:
    logits, features, _ = _logits_features_labels()
    with pytest.raises(ValueError, match=message):
        CollapseLoss(collapse_lambda=lam)(logits, features, labels)


@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.parametrize("num_items", [None, 0, 8])
def test_a_batch_without_labelled_items_gives_zero_with_a_gradient_path(lam: float, num_items) -> None:
    logits, features, labels = _logits_features_labels()
    crit = CollapseLoss(collapse_lambda=lam, label_smoothing=0.1)
    loss = crit(logits, features, torch.full_like(labels, -100), num_items)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert features.grad is None or torch.equal(features.grad, torch.zeros_like(features))
