"""Label-aware transferability scores of fixed features: H-score and LogME.

Both answer the question neural-collapse NC1 answers -- "how well does a linear classifier on these frozen
features fit the downstream labels?" -- without training one, so a probe can report all three side by side
and users can see which one tracks transfer accuracy on their models (`skipcollapse.probe.rank_backbones`).

* **H-score** (Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
  Learning", ICIP 2019): H(f) = tr(cov(f)⁻¹ cov(E[f | y])). Higher is better: the class-conditional means
  spread widely relative to the total spread of the features. It is ill-posed as written when cov(f) is
  singular or badly conditioned -- always the case when the feature width d exceeds the number of examples
  N, which is the usual few-shot situation -- because the inverse then amplifies directions of nearly zero
  variance. By default the covariance is therefore *shrunk* towards a scaled identity with the Ledoit-Wolf
  coefficient (as proposed by Ibrahim et al., "Newer is not always better: Rethinking transferability
  metrics, their peculiarities, stability and performance", 2022); ``shrinkage=0`` gives the textbook
  formula with a Moore-Penrose pseudo-inverse instead.
* **LogME** (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML
  2021): for each class, the log marginal likelihood (evidence) of a Bayesian linear regression from the
  features to the class's one-vs-rest indicator, maximised over the prior precision α and the noise
  precision β by MacKay's fixed-point iteration, divided by N; averaged over classes. Higher is better.
  One SVD of the feature matrix serves every class and every iteration.

Inputs are ``[N, d]`` features and ``[N]`` integer labels as torch tensors or numpy arrays; all arithmetic
is float64 numpy, and the result is a Python float.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

__all__ = ["h_score", "ledoit_wolf_shrinkage", "logme"]

Shrinkage = float | Literal["auto"]


def _as_arrays(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """float64 features [N, d] and int64 labels [N], validated (torch tensors are detached and moved to CPU)."""
    if hasattr(features, "detach"):
        features = features.detach().cpu().double().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [N, d], got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be 1-D with one entry per feature row ({x.shape[0]}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    if len(np.unique(y)) < 2:
        raise ValueError("transferability scores compare classes and need at least 2 classes in the labels")
    return x, y.astype(np.int64)


# --------------------------------------------------------------------------------------------- H-score
def ledoit_wolf_shrinkage(centred: np.ndarray) -> float:
    """The Ledoit-Wolf (2004) shrinkage coefficient ρ ∈ [0, 1] for the covariance of already centred rows.

    The shrunk estimate (1 − ρ)·S + ρ·(tr S / d)·I with S = XᵀX/N minimises the expected Frobenius error;
    ρ = min(b̄², d²)/d² with d² = ‖S − m I‖²_F (m = tr S / d) and b̄² = (1/N²) Σ_i ‖x_i x_iᵀ − S‖²_F.
    Both are computed without forming the N outer products: ‖x xᵀ − S‖²_F = ‖x‖⁴ − 2 xᵀ S x + ‖S‖²_F.
    """
    n, d = centred.shape
    s = centred.T @ centred / n
    m = np.trace(s) / d
    s_fro2 = float(np.sum(s * s))
    dist2 = s_fro2 - 2 * m * np.trace(s) + m * m * d  # ‖S − mI‖²_F
    if dist2 <= 0:
        return 0.0  # S is already a multiple of the identity: nothing to shrink towards
    row_sq = np.einsum("ij,ij->i", centred, centred)
    quad = np.einsum("ij,ij->i", centred @ s, centred)  # x_iᵀ S x_i
    b_bar2 = float(np.sum(row_sq**2 - 2 * quad + s_fro2)) / n**2
    return float(min(b_bar2, dist2) / dist2)


def h_score(features: Any, labels: Any, *, shrinkage: Shrinkage = "auto") -> float:
    """H-score tr(cov(f)⁻¹ cov(E[f|y])) of features ``[N, d]`` for labels ``[N]`` (higher: more transferable).

    >>> import numpy as np
    >>> from skipcollapse.collapse.transferability import h_score
    >>> separable = np.array([[0.0], [0.1], [1.0], [1.1]])
    >>> by_value, mixed = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    >>> h_score(separable, by_value, shrinkage=0) > h_score(separable, mixed, shrinkage=0)
    True

    Covariances are the population (1/N) ones: cov(E[f|y]) = Σ_k (n_k/N)(μ_k − μ)(μ_k − μ)ᵀ.

    Args:
        shrinkage: ``"auto"`` (default) inverts the Ledoit-Wolf shrunk covariance (1 − ρ)·cov(f) + ρ·(tr/d)·I,
            which keeps the score finite and stable when d ≥ N or the features are nearly degenerate; a float
            ρ ∈ [0, 1] fixes the coefficient; ``0`` is the original definition, with the Moore-Penrose
            pseudo-inverse (eigenvalues below max(N, d)·eps·λ_max count as zero) where cov(f) is singular.

    Computed from the thin SVD of the centred features X = U S Vᵀ: cov(f) = V (S²/N) Vᵀ, and every centred
    class mean lies in the row space of X, so only the (at most min(N, d)) directions in V matter -- also for
    the shrunk covariance, which only adds ρ·m to those eigenvalues. Cost O(N·d·min(N, d)).
    """
    x, y = _as_arrays(features, labels)
    n, d = x.shape
    centred = x - x.mean(axis=0)
    if shrinkage == "auto":
        rho = ledoit_wolf_shrinkage(centred)
    elif isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool) and 0.0 <= shrinkage <= 1.0:
        rho = float(shrinkage)
    else:
        raise ValueError(f"shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}")
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    eig = sing**2 / n  # eigenvalues of cov(f) in the directions vt
    scale = eig.sum() / d  # tr(cov f) / d, the shrinkage target's level
    if scale == 0:
        raise ValueError("all feature rows are identical; the H-score is undefined")
    shrunk = (1.0 - rho) * eig + rho * scale
    keep = eig > max(n, d) * np.finfo(np.float64).eps * eig.max() if rho == 0 else shrunk > 0
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    means = np.zeros((len(classes), d))
    np.add.at(means, inverse, centred)
    means /= counts[:, None]  # centred class means μ_k − μ
    proj = means @ vt[keep].T  # [K, r] coordinates in the eigenbasis
    return float(np.sum((counts / n)[:, None] * proj**2 / shrunk[keep]))


# ----------------------------------------------------------------------------------------------- LogME
def _evidence_terms(
    alpha: float, beta: float, sing_sq: np.ndarray, proj_sq: np.ndarray, y_norm_sq: float, n: int, d: int
) -> tuple[float, float, float, float]:
    """Log evidence, γ, ‖m‖² and ‖Fm − y‖² at (α, β) from the SVD quantities of one target.

    F = U S Vᵀ (thin), z = Uᵀy, sing_sq = S², proj_sq = z². The posterior mean m = β A⁻¹ Fᵀ y with
    A = αI + βFᵀF has coordinates β s_i z_i / (α + β s_i²) in V; the residual splits into the part of y
    in the column space of F, Σ (α z_i / (α + β s_i²))², and the part outside it, ‖y‖² − ‖z‖².
    log|A| = Σ_i log(α + β s_i²) + (d − r) log α (A has eigenvalue α off the row space of F).
    """
    denom = alpha + beta * sing_sq
    m_sq = float(np.sum(beta**2 * sing_sq * proj_sq / denom**2))
    residual = float(np.sum(alpha**2 * proj_sq / denom**2)) + max(y_norm_sq - float(proj_sq.sum()), 0.0)
    gamma = float(np.sum(beta * sing_sq / denom))
    log_det = float(np.sum(np.log(denom))) + (d - len(sing_sq)) * math.log(alpha)
    evidence = (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * math.log(2 * math.pi)
        - 0.5 * beta * residual
        - 0.5 * alpha * m_sq
        - 0.5 * log_det
    )
    return evidence, gamma, m_sq, residual


def _max_evidence(
    sing_sq: np.ndarray, proj_sq: np.ndarray, y_norm_sq: float, n: int, d: int, max_iter: int, tol: float
) -> float:
    """MacKay's fixed point (You et al., Algorithm 1): α ← γ/‖m‖², β ← (N − γ)/‖Fm − y‖², from α = β = 1."""
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        _, gamma, m_sq, residual = _evidence_terms(alpha, beta, sing_sq, proj_sq, y_norm_sq, n, d)
        # Guards for exact fits (zero residual) or a zero target fit (m = 0): keep the precisions finite.
        new_alpha = gamma / max(m_sq, 1e-300)
        new_beta = (n - gamma) / max(residual, 1e-300)
        new_alpha, new_beta = min(max(new_alpha, 1e-300), 1e300), min(max(new_beta, 1e-300), 1e300)
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return _evidence_terms(alpha, beta, sing_sq, proj_sq, y_norm_sq, n, d)[0]


def logme(features: Any, labels: Any, *, max_iter: int = 1000, tol: float = 1e-8) -> float:
    """LogME of features ``[N, d]`` for labels ``[N]``: the mean over classes of the maximum log evidence / N.

    As in You et al., the features enter as given (no centring, no bias column) and each class k is the
    regression target y = 1[label = k]; α, β start at 1 and iterate until both change by less than ``tol``
    (relative) or ``max_iter`` steps. The value is comparable between feature sets on the *same* labels --
    that is how it ranks models -- not across tasks.
    """
    x, y = _as_arrays(features, labels)
    n, d = x.shape
    u, sing, _ = np.linalg.svd(x, full_matrices=False)
    sing_sq = sing**2
    total = 0.0
    classes = np.unique(y)
    for k in classes:
        target = (y == k).astype(np.float64)
        proj_sq = (u.T @ target) ** 2
        total += _max_evidence(sing_sq, proj_sq, float(target @ target), n, d, max_iter, tol) / n
    return total / len(classes)
