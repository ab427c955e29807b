"""Tests of the streaming NC metrics against a straightforward reference written from the formulas."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

from skipcollapse.collapse import metrics as metrics_module
from skipcollapse.collapse.metrics import CollapseMetrics, collapse_metrics

KEYS = ["nc1", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf_distance"]


# --------------------------------------------------------------------------- reference
def reference_metrics(z, y, num_classes, head_weight=None, logits=None):
    """Every formula spelled out with per-class loops, explicit Σ_W/Σ_B and torch.linalg.pinv."""
    z = z.double()
    classes = [k for k in range(num_classes) if (y == k).any()]
    K, (N, d) = len(classes), z.shape
    mu_g = z.mean(dim=0)
    mus = {k: z[y == k].mean(dim=0) for k in classes}
    sigma_w = torch.zeros(d, d, dtype=torch.float64)
    for k in classes:
        for zi in z[y == k]:
            diff = (zi - mus[k])[:, None]
            sigma_w += diff @ diff.T
    sigma_w /= N
    sigma_b = torch.zeros(d, d, dtype=torch.float64)
    for k in classes:
        diff = (mus[k] - mu_g)[:, None]
        sigma_b += diff @ diff.T
    sigma_b /= K
    out = {"nc1": (torch.trace(sigma_w @ torch.linalg.pinv(sigma_b)) / K).item()}

    var = {k: ((z[y == k] - mus[k]) ** 2).sum(dim=1).mean().item() for k in classes}
    ratios = [
        (var[i] + var[j]) / (2 * ((mus[i] - mus[j]) ** 2).sum().item()) for i, j in itertools.permutations(classes, 2)
    ]
    out["cdnv"] = sum(ratios) / len(ratios)

    centred = {k: mus[k] - mu_g for k in classes}
    norms = [centred[k].norm().item() for k in classes]
    mean_norm = sum(norms) / K
    out["nc2_equinorm"] = math.sqrt(sum((x - mean_norm) ** 2 for x in norms) / K) / mean_norm
    cosines = [
        (centred[i] @ centred[j] / (centred[i].norm() * centred[j].norm())).item()
        for i, j in itertools.combinations(classes, 2)
    ]
    mean_cos = sum(cosines) / len(cosines)
    out["nc2_equiangle"] = math.sqrt(sum((c - mean_cos) ** 2 for c in cosines) / len(cosines))
    out["nc2_etf_distance"] = sum(abs(c + 1 / (K - 1)) for c in cosines) / len(cosines)

    if head_weight is not None:
        W = head_weight.double()[classes]
        M = torch.stack([centred[k] for k in classes])
        out["nc3"] = ((W / W.norm() - M / M.norm()) ** 2).sum().item()
    if logits is not None:
        disagree = 0
        for zi, li in zip(z, logits):
            dists = [((zi - mus[k]) ** 2).sum().item() for k in classes]
            ncc = classes[min(range(K), key=dists.__getitem__)]
            disagree += int(ncc != int(li.argmax()))
        out["nc4"] = disagree / N
    return out


def assert_close(got, want, rel=1e-8, abs_=1e-12):
    assert set(got) == set(want), (sorted(got), sorted(want))
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=rel, abs=abs_), key


def make_data(n=300, d=8, k=5, seed=0, spread=1.0, balanced=False):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(k, d, generator=g, dtype=torch.float64)
    if balanced:
        y = torch.arange(n) % k
    else:
        probs = torch.linspace(1, 3, k, dtype=torch.float64)
        y = torch.multinomial(probs, n, replacement=True, generator=g)
    scales = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    z = centres[y] + spread * scales * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    return z, y, w


# --------------------------------------------------------------------------- agreement
@pytest.mark.parametrize(
    "n,d,k,balanced",
    [(300, 8, 5, False), (300, 8, 5, True), (200, 6, 12, False), (400, 32, 3, False)],
    ids=["unbalanced", "balanced", "more-classes-than-dims", "wide"],
)
def test_matches_reference(n, d, k, balanced):
    z, y, w = make_data(n, d, k, seed=n + d + k, balanced=balanced)
    logits = z @ w.T
    got = collapse_metrics(z, y, k, head_weight=w, logits=logits)
    want = reference_metrics(z, y, k, head_weight=w, logits=logits)
    assert_close(got, want)
    assert 0.0 < got["nc4"] < 1.0  # the check can fail both ways: some agree, some don't


def test_hand_computed_one_dimensional_example():
    # class 0 at {-1.5, -0.5} (mean -1, var 0.25), class 1 at {0.5, 1.5} (mean 1, var 0.25):
    # Σ_W = 0.25, Σ_B = 1 -> NC1 = 0.25 / 2; CDNV = 0.5 / (2 * 4).
    z = torch.tensor([[-1.5], [-0.5], [0.5], [1.5]])
    y = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # first sample disagrees
    got = collapse_metrics(z, y, 2, head_weight=torch.tensor([[1.0], [1.0]]), logits=logits)
    assert got["nc1"] == pytest.approx(0.125, abs=1e-14)
    assert got["cdnv"] == pytest.approx(0.0625, abs=1e-14)
    assert got["nc2_equinorm"] == pytest.approx(0.0, abs=1e-14)
    assert got["nc2_equiangle"] == pytest.approx(0.0, abs=1e-14)
    assert got["nc2_etf_distance"] == pytest.approx(0.0, abs=1e-14)
    assert got["nc3"] == pytest.approx(2.0, abs=1e-14)  # W ∝ [1, 1] vs M ∝ [-1, 1]
    assert got["nc4"] == 0.25
    aligned = collapse_metrics(z, y, 2, head_weight=torch.tensor([[-3.0], [3.0]]))
    assert aligned["nc3"] == pytest.approx(0.0, abs=1e-14)


def test_perfect_collapse_onto_simplex_etf():
    k, d, per_class = 4, 6, 5
    etf = torch.eye(k, dtype=torch.float64) - 1.0 / k  # rows: a simplex ETF in R^k
    rotation, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    means = 7.0 * etf @ rotation[:k] + torch.randn(d, dtype=torch.float64)  # scaled, rotated, shifted
    y = torch.arange(k).repeat(per_class)
    z = means[y]
    w = means - means.mean(dim=0)
    got = collapse_metrics(z, y, k, head_weight=w, logits=z @ w.T)
    assert abs(got["nc1"]) < 1e-12
    assert got["cdnv"] < 1e-12
    assert got["nc2_equinorm"] < 1e-12
    assert got["nc2_equiangle"] < 1e-12
    assert got["nc2_etf_distance"] < 1e-12
    assert got["nc3"] < 1e-12
    assert got["nc4"] == 0.0


def test_noise_increases_nc1_monotonically():
    values = [collapse_metrics(*make_data(spread=s, seed=3)[:2], 5)["nc1"] for s in (0.1, 0.5, 2.0)]
    assert values[0] < values[1] < values[2]


# --------------------------------------------------------------------------- streaming, merge
def test_streaming_shuffled_batches_equal_one_shot():
    z, y, w = make_data(500, 10, 6, seed=5)
    whole = collapse_metrics(z, y, 6, head_weight=w, logits=z @ w.T)
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))
    metric = CollapseMetrics(6)
    batches = list(torch.split(order, 37))
    for idx in batches:
        metric.update(z[idx].float() if len(idx) % 2 else z[idx], y[idx])
    # float32 batches lose precision before the upcast, so compare against the same values.
    z_seen = torch.empty_like(z)
    for idx in batches:
        z_seen[idx] = z[idx].float().double() if len(idx) % 2 else z[idx]
    metric.begin_nc4_pass()
    for idx in reversed(batches):
        metric.nc4_update(z_seen[idx], z_seen[idx] @ w.T)
    want = collapse_metrics(z_seen, y, 6, head_weight=w, logits=z_seen @ w.T)
    assert_close(metric.compute(head_weight=w), want, rel=1e-10)
    assert metric.num_samples == 500

    exact = CollapseMetrics(6)
    for idx in batches:
        exact.update(z[idx], y[idx])
    assert_close(exact.compute(head_weight=w), {k: v for k, v in whole.items() if k != "nc4"}, rel=1e-10)


def test_merge_of_two_halves_equals_whole():
    z, y, w = make_data(400, 8, 5, seed=7)
    a, b = CollapseMetrics(5), CollapseMetrics(5)
    a.update(z[:130], y[:130])
    b.update(z[130:], y[130:])
    assert a.merge(b) is a
    assert_close(a.compute(head_weight=w), collapse_metrics(z, y, 5, head_weight=w), rel=1e-10)
    empty = CollapseMetrics(5)
    empty.merge(a)  # an empty metric takes the other's width and device
    assert_close(empty.compute(), a.compute(), rel=1e-12)


def test_merge_rejects_mismatches():
    a, b, c = CollapseMetrics(5), CollapseMetrics(4), CollapseMetrics(5)
    a.update(torch.randn(10, 8), torch.arange(10) % 5)
    c.update(torch.randn(10, 3), torch.arange(10) % 5)
    with pytest.raises(ValueError, match="num_classes 4 into 5"):
        a.merge(b)
    with pytest.raises(ValueError, match="width 3 into width 8"):
        a.merge(c)
    a.begin_nc4_pass()
    with pytest.raises(RuntimeError, match="before begin_nc4_pass"):
        a.merge(CollapseMetrics(5))


def test_compute_does_not_mutate_and_updates_continue():
    z, y, _ = make_data(300, 8, 5, seed=9)
    metric = CollapseMetrics(5)
    metric.update(z[:150], y[:150])
    first = metric.compute()
    assert metric.compute() == first
    metric.update(z[150:], y[150:])
    assert_close(metric.compute(), reference_metrics(z, y, 5))


def test_reset_clears_everything():
    z, y, _ = make_data(100, 8, 5, seed=2)
    metric = CollapseMetrics(5)
    metric.update(z, y)
    metric.begin_nc4_pass()
    metric.reset()
    assert metric.num_samples == 0 and metric.num_features is None
    with pytest.raises(ValueError, match="no samples"):
        metric.compute()
    metric.update(z[:, :3], y)  # width is free again after reset; updates allowed again
    assert_close(metric.compute(), reference_metrics(z[:, :3], y, 5))


# --------------------------------------------------------------------------- NC4 two-pass API
def test_nc4_requires_the_two_pass_protocol():
    z, y, w = make_data(200, 8, 5, seed=4)
    metric = CollapseMetrics(5)
    with pytest.raises(RuntimeError, match="begin_nc4_pass"):
        metric.nc4_update(z, z @ w.T)
    metric.update(z, y, logits=z @ w.T)
    with pytest.warns(UserWarning, match="second pass"):
        result = metric.compute()
    assert "nc4" not in result
    metric.begin_nc4_pass()
    with pytest.raises(RuntimeError, match="frozen"):
        metric.update(z, y)
    assert "nc4" not in metric.compute()  # no second-pass samples yet
    metric.nc4_update(z[:0], (z @ w.T)[:0])  # empty: no-op
    metric.nc4_update(z, z @ w.T)
    assert metric.compute()["nc4"] == pytest.approx(reference_metrics(z, y, 5, logits=z @ w.T)["nc4"], abs=0)
    with pytest.raises(ValueError, match=r"logits must be a tensor \[N, 5\]"):
        metric.nc4_update(z, torch.zeros(200, 4))
    with pytest.raises(ValueError, match="logits contain NaN or inf in 1 of"):
        bad = z @ w.T
        bad[3, 1] = float("nan")
        metric.nc4_update(z, bad)


def test_nc4_head_predicting_an_absent_class_disagrees():
    z, y, _ = make_data(60, 4, 3, seed=11)
    logits = torch.zeros(60, 4)
    logits[:, 3] = 1.0  # the head always predicts class 3, which has no samples
    with pytest.warns(UserWarning, match=r"absent from the data: \[3\]"):
        assert collapse_metrics(z, y, 4, logits=logits)["nc4"] == 1.0


# --------------------------------------------------------------------------- edge cases
def test_absent_class_uses_present_classes_and_warns_once():
    z, y, w = make_data(300, 8, 5, seed=12)
    y = torch.where(y >= 2, y + 2, y)  # classes 2 and 3 of 7 are absent
    metric = CollapseMetrics(7)
    metric.update(z, y)
    with pytest.warns(UserWarning, match=r"classes absent from the data: \[2, 3\]") as record:
        got = metric.compute(head_weight=torch.cat([w[:2], torch.randn(2, 8).double(), w[2:]]))
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same absent set is not warned about twice
        metric.compute()
    relabelled = torch.where(y >= 4, y - 2, y)
    assert_close(got, reference_metrics(z, relabelled, 5, head_weight=w))


def test_single_sample_class_has_zero_variance():
    z, y, w = make_data(100, 6, 4, seed=13)
    y[y == 3] = 2
    y[17] = 3  # class 3 has exactly one sample
    got = collapse_metrics(z, y, 4, head_weight=w, logits=z @ w.T)
    assert_close(got, reference_metrics(z, y, 4, head_weight=w, logits=z @ w.T))


def test_fewer_than_two_classes_raises():
    metric = CollapseMetrics(1)  # allowed at construction
    metric.update(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes present; 1 of 1"):
        metric.compute()
    three = CollapseMetrics(3)
    three.update(torch.randn(10, 3), torch.full((10,), 2))
    with pytest.raises(ValueError, match="at least 2 classes present; 1 of 3"):
        three.compute()
    with pytest.raises(ValueError, match="at least 2 classes"):
        three.begin_nc4_pass()


@pytest.mark.parametrize("num_classes", [0, -3, 2.0, True])
def test_invalid_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        CollapseMetrics(num_classes)


def test_non_finite_features_raise_and_leave_state_unchanged():
    z, y, _ = make_data(50, 4, 3, seed=14)
    metric = CollapseMetrics(3)
    metric.update(z, y)
    before = metric.compute()
    bad = z.clone()
    bad[3, 0] = float("nan")
    bad[7, 2] = float("inf")
    bad[7, 3] = float("-inf")
    with pytest.raises(ValueError, match="NaN or inf in 2 of 50 rows"):
        metric.update(bad, y)
    assert metric.compute() == before


def test_labels_out_of_range_or_not_integer():
    metric = CollapseMetrics(5)
    with pytest.raises(ValueError, match=r"in \[0, 5\); got out-of-range values \[-1, 5, 9\]"):
        metric.update(torch.randn(6, 2), torch.tensor([0, -1, 5, 9, 5, 4]))
    with pytest.raises(ValueError, match="integer dtype, got torch.float32"):
        metric.update(torch.randn(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels has 3 rows but features have 2"):
        metric.update(torch.randn(2, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="1-D"):
        metric.update(torch.randn(2, 2), torch.tensor([[0, 1]]))
    assert metric.num_samples == 0 and metric.num_features is None


def test_width_device_and_dtype_between_updates():
    metric = CollapseMetrics(3)
    metric.update(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="width 6 but this metric was fixed to width 5"):
        metric.update(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="features are on meta but the statistics live on cpu"):
        metric.update(torch.empty(4, 5, device="meta"), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="floating point"):
        metric.update(torch.ones(4, 5, dtype=torch.int64), torch.tensor([0, 1, 2, 0]))
    pinned = CollapseMetrics(3, device="meta")
    with pytest.raises(ValueError, match="features are on cpu but the statistics live on meta"):
        pinned.update(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))


def test_mixed_float_dtypes_are_upcast():
    z, y, _ = make_data(90, 6, 3, seed=15)
    parts = [z[:30].float(), z[30:60].half(), z[60:].bfloat16()]
    metric = CollapseMetrics(3)
    for part, labels in zip(parts, torch.split(y, 30)):
        metric.update(part, labels)
    seen = torch.cat([p.double() for p in parts])
    assert_close(metric.compute(), reference_metrics(seen, y, 3), rel=1e-10)


def test_empty_update_is_a_no_op():
    metric = CollapseMetrics(3)
    metric.update(torch.empty(0, 7), torch.empty(0, dtype=torch.long))
    assert metric.num_features is None and metric.device is None  # nothing fixed
    z, y, _ = make_data(40, 4, 3, seed=16)
    metric.update(z, y)
    metric.update(torch.empty(0, 4), torch.empty(0, dtype=torch.long))
    assert_close(metric.compute(), reference_metrics(z, y, 3), rel=1e-10)


def test_num_features_fixes_width_up_front():
    metric = CollapseMetrics(3, device="cpu", num_features=4)
    assert metric.num_features == 4
    with pytest.raises(ValueError, match="width 5 but this metric was fixed to width 4"):
        metric.update(torch.randn(3, 5), torch.tensor([0, 1, 2]))


def test_features_requiring_grad_are_detached():
    z, y, w = make_data(60, 4, 3, seed=17)
    z = z.clone().requires_grad_(True)
    got = collapse_metrics(z, y, 3, head_weight=w, logits=(z @ w.T))
    assert_close(got, reference_metrics(z.detach(), y, 3, head_weight=w, logits=(z @ w.T).detach()))


def test_degenerate_geometry():
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="the means of classes 0 and 1 coincide"):
        collapse_metrics(torch.ones(4, 3), y, 2)
    with pytest.raises(ValueError, match=r"head_weight must have shape \[2, 3\]"):
        collapse_metrics(torch.randn(4, 3), y, 2, head_weight=torch.randn(3, 2))
    z = torch.tensor([[0.0, 1.0], [0.0, -1.0], [5.0, 1.0], [5.0, -1.0], [5.0, 0.0], [5.0, 0.0]])
    with pytest.raises(ValueError, match="the means of classes 1 and 2 coincide"):  # an error, not cdnv = inf
        collapse_metrics(z, torch.tensor([0, 0, 1, 1, 2, 2]), 3)


def test_nc1_ignores_the_rounding_direction_of_the_centred_means() -> None:
    # Count-weighted centred class means sum to zero, so they span at most K-1 directions; with a large common
    # offset the K-th singular value is pure rounding (~1e-16 of the largest) and must not enter NC1.
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(80) % 4
    class_shift = torch.randn(4, 384, generator=g, dtype=torch.float64)
    z = 1e3 + class_shift[labels] + 0.5 * torch.randn(80, 384, generator=g, dtype=torch.float64)
    got = collapse_metrics(z, labels, 4)["nc1"]
    expected = reference_metrics(z, labels, 4)["nc1"]
    assert got == pytest.approx(expected, rel=1e-6)
    assert got < 10


def _two_pass_reference(z: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, float]:
    """NC1 and CDNV by the textbook two-pass definitions in float64 (means first, then deviations)."""
    z = z.double()
    means = torch.stack([z[y == c].mean(0) for c in range(k)])
    centred = means - z.mean(0)
    within = sum((z[y == c] - means[c]).T @ (z[y == c] - means[c]) for c in range(k)) / len(z)
    between = centred.T @ centred / k
    nc1 = float(torch.trace(within @ torch.linalg.pinv(between, hermitian=True)) / k)
    var = torch.stack([(z[y == c] - means[c]).square().sum(1).mean() for c in range(k)])
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
    cdnv = sum(float((var[i] + var[j]) / (2 * (means[i] - means[j]).square().sum())) for i, j in pairs) / len(pairs)
    return {"nc1": nc1, "cdnv": cdnv}


@pytest.mark.parametrize("offset", [1e7, 1e8])
def test_a_large_common_offset_costs_no_precision(offset: float) -> None:
    g = torch.Generator().manual_seed(0)
    k, d, per = 4, 6, 50
    y = torch.arange(k).repeat_interleave(per)
    z = torch.randn(k, d, generator=g, dtype=torch.float64)[y] + 0.3 * torch.randn(
        k * per, d, generator=g, dtype=torch.float64
    )
    reference = _two_pass_reference(z, y, k)
    metric = CollapseMetrics(k)
    for part in torch.split(torch.arange(len(y)), 37):  # batch by batch
        metric.update(z[part] + offset, y[part])
    got = metric.compute()
    for key in ("nc1", "cdnv"):
        assert got[key] == pytest.approx(reference[key], rel=1e-6), key


def test_cdnv_of_close_class_means_is_computed_from_differences() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0] * 20 + [1] * 20 + [2] * 20)
    # two means 1e-4 apart at distance 1e3 from the origin: ‖a‖² + ‖b‖² − 2a·b keeps 1e6·1e-16 of 1e-8 (1%)
    centres = torch.tensor([[1e3, 0.0], [1e3 + 1e-4, 0.0], [0.0, 1e3]], dtype=torch.float64)
    z = centres[y] + 1e-5 * torch.randn(60, 2, generator=g, dtype=torch.float64)
    assert collapse_metrics(z, y, 3)["cdnv"] == pytest.approx(_two_pass_reference(z, y, 3)["cdnv"], rel=1e-6)


def test_nearly_coinciding_means_name_the_classes_and_nan_heads_are_refused() -> None:
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    z = torch.tensor([[0.0, 1.0], [0.0, -1.0], [5.0, 1.0], [5.0, -1.0], [5.0, 1e-9], [5.0, -1e-9 + 1e-12]])
    with pytest.raises(ValueError, match="classes 1 and 2 coincide"):
        collapse_metrics(z.double(), y, 3)
    with pytest.raises(ValueError, match="head_weight contains NaN"):
        collapse_metrics(torch.randn(6, 3), y, 3, head_weight=torch.full((3, 3), float("nan")))


# --------------------------------------------------------------------------- the declared state
def test_the_declared_states_are_what_reset_copy_and_merge_act_on():
    """Each state in `_STATES`, read from the table, is compared with a metric that saw all the data: a state
    declared there but left out of reset, copy or merge fails here."""
    states = metrics_module._STATES
    names = {state.name for state in states}
    assert {"_counts", "_sq_norms", "_sums", "_gram", "_shift", "_nc4_means", "_nc4_disagree", "_nc4_total"} <= names
    accumulated = [state for state in states if state.reduce != "frozen"]
    first_pass = [state for state in accumulated if not state.nc4]
    z, y, w = make_data(300, 6, 4, seed=11)
    z = z + 20.0  # an offset common to the features: shifts and their re-basing matter
    index = torch.arange(len(y))
    shards = [index[(index < 120) & (y != 3)], index[(index >= 120) | (y == 3)]]  # shard 0 never sees class 3
    # In batches: a class's shift is its mean in the first batch that held it, so its sums about the shift are not 0.
    batches = [torch.split(shard, 37) for shard in shards]
    whole = CollapseMetrics(4)
    for batch in itertools.chain(*batches):  # shard by shard, so that its shifts are those of the merged metric
        whole.update(z[batch], y[batch])

    def close(got, want, name):
        assert got is not None and got.dtype == want.dtype and got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-8, msg=name)

    # merge: every first-pass state adds up to the whole's (the shifts agree exactly here)
    merged = CollapseMetrics(4)
    parts = [CollapseMetrics(4) for _ in shards]
    for part, shard_batches in zip(parts, batches):
        for batch in shard_batches:
            part.update(z[batch], y[batch])
    merged.merge(parts[0]).merge(parts[1])
    for state in first_pass:
        close(getattr(merged, state.name), getattr(whole, state.name), state.name)
    assert all(getattr(merged, state.name) is None for state in states if state not in first_pass)

    # sync: checked with real processes (gloo) in tests/test_metrics_distributed.py
    whole.begin_nc4_pass(sync=False)
    whole.nc4_update(z, z @ w.T)

    # copy: its own tensor for every accumulated state, the frozen ones shared; reset: nothing left
    copy = whole._copy()
    for state in states:
        value, copied = getattr(whole, state.name), getattr(copy, state.name)
        assert torch.equal(copied, value), state.name
        assert (copied is value) == (state.reduce == "frozen"), state.name
        if state.reduce != "frozen":
            copied.add_(1)
            assert not torch.equal(copied, value), state.name
    whole.reset()
    assert all(getattr(whole, name) is None for name in names)
    fixed = CollapseMetrics(4, "cpu", num_features=6)
    for state in states:
        value = getattr(fixed, state.name)
        if state in first_pass:
            assert value.dtype == state.dtype and torch.equal(value, torch.zeros(state.dims(4, 6), dtype=state.dtype))
        else:
            assert value is None, state.name
