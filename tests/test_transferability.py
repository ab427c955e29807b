"""H-score and LogME against direct (slow, textbook) computations, and on data whose ranking is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from sklearn.covariance import LedoitWolf

from skipcollapse.collapse.metrics import collapse_metrics
from skipcollapse.collapse.transferability import h_score, ledoit_wolf_shrinkage, logme


def blobs(n: int, d: int, k: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k Gaussian classes with unit noise around centres of norm ~separation·√d."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    centres = separation * rng.normal(size=(k, d))
    return centres[labels] + rng.normal(size=(n, d)), labels


def class_mean_covariance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """cov(E[f|y]) straight from the definition: replace every row by its class mean, take the covariance."""
    conditional = np.stack([x[y == label].mean(axis=0) for label in y])
    return np.cov(conditional, rowvar=False, bias=True)


# ------------------------------------------------------------------------------------------------ H-score
def test_h_score_without_shrinkage_is_the_textbook_formula() -> None:
    x, y = blobs(60, 6, 4, 1.0, seed=0)
    direct = np.trace(np.linalg.inv(np.cov(x, rowvar=False, bias=True)) @ class_mean_covariance(x, y))
    assert h_score(x, y, shrinkage=0) == pytest.approx(direct, rel=1e-10)
    assert 0.5 < direct < 3.0  # a non-trivial value: K - 1 = 3 would mean perfectly separated classes


def test_h_score_uses_the_pseudo_inverse_for_singular_covariance() -> None:
    x, y = blobs(30, 5, 3, 1.0, seed=1)
    x = np.hstack([x, x[:, :2] + x[:, 2:3]])  # two linearly dependent columns: cov(f) has rank 5 of 7
    cov = np.cov(x, rowvar=False, bias=True)
    assert np.linalg.matrix_rank(cov) == 5
    direct = np.trace(np.linalg.pinv(cov) @ class_mean_covariance(x, y))
    assert h_score(x, y, shrinkage=0) == pytest.approx(direct, rel=1e-8)


@pytest.mark.parametrize("n,d", [(80, 10), (20, 50)])  # d < N and the few-shot case d > N
def test_h_score_auto_shrinkage_is_ledoit_wolf(n: int, d: int) -> None:
    x, y = blobs(n, d, 4, 0.5, seed=2)
    shrunk = LedoitWolf().fit(x).covariance_  # scikit-learn's independent implementation
    direct = np.trace(np.linalg.inv(shrunk) @ class_mean_covariance(x, y))
    assert h_score(x, y) == pytest.approx(direct, rel=1e-8)
    assert ledoit_wolf_shrinkage(x - x.mean(axis=0)) == pytest.approx(LedoitWolf().fit(x).shrinkage_, rel=1e-10)


def test_h_score_fixed_shrinkage_and_invariance() -> None:
    x, y = blobs(50, 4, 3, 1.0, seed=3)
    cov = np.cov(x, rowvar=False, bias=True)
    target = np.trace(cov) / 4 * np.eye(4)
    direct = np.trace(np.linalg.inv(0.7 * cov + 0.3 * target) @ class_mean_covariance(x, y))
    assert h_score(x, y, shrinkage=0.3) == pytest.approx(direct, rel=1e-10)
    # Without shrinkage the score is invariant to invertible linear maps and shifts of the features.
    mixing = np.random.default_rng(4).normal(size=(4, 4))
    assert h_score(x @ mixing + 5.0, y, shrinkage=0) == pytest.approx(h_score(x, y, shrinkage=0), rel=1e-8)


def test_h_score_takes_torch_tensors() -> None:
    x, y = blobs(40, 5, 2, 1.0, seed=5)
    assert h_score(torch.tensor(x, dtype=torch.float32), torch.tensor(y)) == pytest.approx(h_score(x, y), rel=1e-5)


# ----------------------------------------------------------------------------------------------- LogME
def direct_log_evidence(f: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """log p(t | F, α, β) of Bayesian linear regression, with the full d×d posterior precision A."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ t)
    return (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * beta * float(np.sum((f @ m - t) ** 2))
        - 0.5 * alpha * float(m @ m)
        - 0.5 * np.linalg.slogdet(a)[1]
    )


def brute_force_logme(f: np.ndarray, y: np.ndarray) -> float:
    """max over (α, β) of the direct evidence, per class, by Nelder-Mead from several starts; mean of /N."""
    total = 0.0
    for label in np.unique(y):
        t = (y == label).astype(np.float64)
        best = -np.inf
        for start in ([0.0, 0.0], [3.0, -2.0], [-3.0, 3.0]):
            result = minimize(
                lambda p: -direct_log_evidence(f, t, math.exp(p[0]), math.exp(p[1])),
                start,
                method="Nelder-Mead",
                options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000},
            )
            best = max(best, -result.fun)
        total += best / len(y)
    return total / len(np.unique(y))


@pytest.mark.parametrize("n,d,k", [(6, 2, 2), (40, 5, 3), (9, 14, 2)])  # N > d and N < d
def test_logme_equals_brute_force_evidence_maximum(n: int, d: int, k: int) -> None:
    f, y = blobs(n, d, k, 0.8, seed=6)
    assert logme(f, y) == pytest.approx(brute_force_logme(f, y), abs=1e-7)


# ------------------------------------------------------------------------------------------------ ranking
def test_both_scores_rank_the_more_separable_features_higher() -> None:
    separable, y = blobs(90, 8, 3, 2.0, seed=7)
    rng = np.random.default_rng(8)
    entangled = rng.normal(size=(90, 8)) + 0.2 * separable  # the same classes, drowned in noise
    assert h_score(separable, y) > h_score(entangled, y) + 0.5
    assert logme(separable, y) > logme(entangled, y) + 0.1
    # ... and NC1 agrees (lower is more collapsed)
    nc1 = [collapse_metrics(torch.tensor(z), torch.tensor(y), 3)["nc1"] for z in (separable, entangled)]
    assert nc1[0] < nc1[1]


def test_scores_reject_bad_input() -> None:
    x, y = blobs(10, 3, 2, 1.0, seed=9)
    with pytest.raises(ValueError, match="2 classes"):
        h_score(x, np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="one entry per feature row"):
        logme(x, y[:5])
    with pytest.raises(ValueError, match="integers"):
        logme(x, y.astype(float))
    with pytest.raises(ValueError, match="shrinkage"):
        h_score(x, y, shrinkage=1.5)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        h_score(x, y)
