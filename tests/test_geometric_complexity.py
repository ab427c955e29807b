"""Geometric complexity: exact Jacobian norms, the projection estimator, the regulariser."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skipcollapse.collapse.geometric_complexity import (
    GeometricComplexityRegularizer,
    gc_penalty,
    geometric_complexity,
)


def tanh_mlp(seed: int = 0, sizes: tuple[int, int, int] = (5, 7, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    inp, hidden, out = sizes
    return nn.Sequential(nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, out)).double()


def hand_jacobian_sq_norms(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """‖W2 diag(1 − tanh²(W1 x + b1)) W1‖²_F per sample, from the chain rule by hand."""
    w1, b1, w2 = mlp[0].weight, mlp[0].bias, mlp[2].weight
    with torch.no_grad():
        slope = 1 - torch.tanh(x @ w1.T + b1) ** 2  # [B, hidden]
        jac = torch.einsum("oh,bh,hi->boi", w2, slope, w1)  # [B, out, in]
    return jac.pow(2).sum((1, 2))


@pytest.fixture
def problem():
    mlp = tanh_mlp()
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return mlp, x


def test_exact_matches_hand_built_jacobian(problem):
    mlp, x = problem
    per_sample = geometric_complexity(mlp, x, exact=True, reduction="none")
    expected = hand_jacobian_sq_norms(mlp, x)
    assert per_sample.shape == (16,)
    assert torch.allclose(per_sample, expected, rtol=1e-12, atol=0)
    assert abs(geometric_complexity(mlp, x, exact=True) - expected.mean()).item() < 1e-12
    # ...and with torch's own Jacobian, one sample at a time.
    autograd_jac = torch.stack([torch.autograd.functional.jacobian(mlp, xi) for xi in x])
    assert torch.allclose(per_sample, autograd_jac.pow(2).sum((1, 2)), rtol=1e-12, atol=0)


def test_linear_map_gives_frobenius_norm_exactly():
    a = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = torch.randn(10, 6, dtype=torch.float64)
    gc = geometric_complexity(lambda t: t @ a.T, x, exact=True)
    assert abs(gc - a.pow(2).sum()).item() < 1e-12


def test_rademacher_is_exact_for_scalar_outputs():
    # One output coordinate: ‖v J‖² = v² ‖J‖² = ‖J‖² for v = ±1, whatever v is.
    a = torch.randn(1, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.randn(10, 6, dtype=torch.float64)
    gc = geometric_complexity(lambda t: t @ a.T, x, projection="rademacher")
    assert abs(gc - a.pow(2).sum()).item() < 1e-12


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
def test_many_projections_close_to_exact(problem, projection):
    mlp, x = problem
    exact = geometric_complexity(mlp, x, exact=True).item()
    gen = torch.Generator().manual_seed(0)
    est = geometric_complexity(mlp, x, 2000, generator=gen, projection=projection).item()
    assert abs(est - exact) / exact < 0.02


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
def test_single_projection_estimates_average_to_exact(problem, projection):
    mlp, x = problem
    x = x[:4]
    exact = geometric_complexity(mlp, x, exact=True).item()
    gen = torch.Generator().manual_seed(42)
    draws = torch.stack([geometric_complexity(mlp, x, 1, generator=gen, projection=projection) for _ in range(400)])
    stderr = draws.std().item() / 400**0.5
    assert draws.std().item() > 0  # really random
    assert abs(draws.mean().item() - exact) < 4 * stderr
    assert abs(draws.mean().item() - exact) / exact < 0.1


def test_generator_makes_estimates_reproducible(problem):
    mlp, x = problem
    first = geometric_complexity(mlp, x, 3, generator=torch.Generator().manual_seed(5))
    second = geometric_complexity(mlp, x, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second)


def test_batched_equals_one_sample_at_a_time(problem):
    mlp, x = problem
    batched = geometric_complexity(mlp, x, exact=True, reduction="none")
    single = torch.cat([geometric_complexity(mlp, xi[None], exact=True, reduction="none") for xi in x])
    assert torch.allclose(batched, single, rtol=1e-13, atol=0)


def test_detached_unless_create_graph(problem):
    mlp, x = problem
    assert not geometric_complexity(mlp, x).requires_grad
    assert geometric_complexity(mlp, x, create_graph=True).requires_grad


def test_integer_inputs_are_rejected():
    with pytest.raises(TypeError, match="embeddings"):
        geometric_complexity(lambda t: t.float(), torch.arange(6).reshape(2, 3))


def test_create_graph_gradient_matches_finite_differences(problem):
    mlp, x = problem
    weight = mlp[0].weight
    geometric_complexity(mlp, x, exact=True, create_graph=True).backward()
    h = 1e-6
    for idx in [(0, 0), (3, 2), (6, 4)]:
        with torch.no_grad():
            weight[idx] += h
            up = hand_jacobian_sq_norms(mlp, x).mean()
            weight[idx] -= 2 * h
            down = hand_jacobian_sq_norms(mlp, x).mean()
            weight[idx] += h
        assert abs(weight.grad[idx].item() - (up - down).item() / (2 * h)) < 1e-6


def test_gradient_flows_into_what_produced_the_inputs():
    # Text models: GC is taken w.r.t. the embeddings, and the embedding table still learns.
    torch.manual_seed(0)
    emb = nn.Embedding(10, 5).double()
    mlp = tanh_mlp()
    ids = torch.tensor([1, 4, 4, 7])
    gc_penalty(mlp, emb(ids)).backward()
    assert emb.weight.grad is not None
    assert emb.weight.grad[[1, 4, 7]].abs().sum() > 0
    assert emb.weight.grad[0].abs().sum() == 0


def test_regulariser_lowers_gc_under_sgd():
    mlp = tanh_mlp(seed=3, sizes=(4, 16, 3))
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    reg = GeometricComplexityRegularizer(gc_lambda=1.0, generator=torch.Generator().manual_seed(0))
    before = geometric_complexity(mlp, x, exact=True).item()
    opt = torch.optim.SGD(mlp.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        loss, gc = reg.penalty_and_gc(mlp, x)
        loss.backward()
        opt.step()
    after = geometric_complexity(mlp, x, exact=True).item()
    assert gc.item() == pytest.approx(loss.item()) and not gc.requires_grad  # lam = 1
    assert before > 0.1
    assert after < 0.5 * before
