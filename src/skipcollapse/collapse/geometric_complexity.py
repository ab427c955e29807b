"""Geometric complexity (GC) of an embedding, after Munn, Dherin and Gonzalvo (2024).

``GC(f, D) = (1/|D|) Σ_{x∈D} ‖∂f(x)/∂x‖²_F``: the mean squared Frobenius norm of the input-output
Jacobian, a discrete Dirichlet energy of ``f`` on the data. Munn et al. show that lower GC of the
embedding bounds and drives neural collapse, also on classes not seen in training, which is why it
is both a diagnostic and a regulariser here.

Estimation. For a random vector ``v`` with ``E[v vᵀ] = I`` (Gaussian ``N(0, I)`` or Rademacher
±1), ``E_v ‖vᵀ J‖² = tr(Jᵀ E[v vᵀ] J) = ‖J‖²_F``, so one vector-Jacobian product per projection is
an unbiased estimate, with cost of one backward pass whatever the width of ``f``. Rademacher is the
default: for a fixed Jacobian its variance, ``2(‖JJᵀ‖²_F − Σ_j (JJᵀ)²_jj)``, never exceeds the
Gaussian one, ``2‖JJᵀ‖²_F``.

Batching. All samples share one backward pass: the VJP of ``Σ_b v_b · f(x)_b`` w.r.t. ``x_b`` is
``J_bᵀ v_b`` only if output ``b`` does not depend on input ``b' ≠ b``. That holds for per-sample
models, i.e. no batch norm in train mode, no cross-sample attention or mixing; put the model in
``eval()`` (which also keeps dropout from making ``f`` random) or make ``fn`` per-sample.

Inputs. GC is defined on a continuous input. For text models the integer token ids are not
differentiable: pass the input embeddings as ``inputs`` and an ``fn`` that maps embeddings to
features (e.g. ``lambda e: model(inputs_embeds=e).pooled``); this module stays generic on tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["geometric_complexity", "gc_from_outputs", "gc_penalty", "GeometricComplexityRegularizer"]

Projection = Literal["rademacher", "gaussian"]


def _random_cotangent(like: Tensor, projection: Projection, generator: torch.Generator | None) -> Tensor:
    if projection == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    if projection == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return (bits * 2 - 1).to(like.dtype)
    raise ValueError(f"projection must be 'rademacher' or 'gaussian', got {projection!r}")


def geometric_complexity(
    fn: Callable[[Tensor], Tensor],
    inputs: Tensor,
    num_projections: int = 1,
    *,
    exact: bool = False,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    projection: Projection = "rademacher",
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Mean over the batch of ``‖∂fn(x)/∂x‖²_F``, estimated with random projections or exactly.

    Example: the Jacobian of a linear map is its weight, whatever the input.

    >>> import torch
    >>> from skipcollapse import geometric_complexity
    >>> weight = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    >>> geometric_complexity(lambda x: x @ weight.T, torch.randn(5, 2), exact=True).item()  # 1 + 4 + 9
    14.0

    Args:
        fn: maps a batch ``[B, ...]`` to outputs ``[B, ...]`` per sample (see the module docstring
            for why it must not mix samples). Output dimensions beyond the first are flattened.
        inputs: floating-point batch, the differentiable input (embeddings for text models). If it
            already requires grad it is used as is, so gradients can also flow into whatever
            produced it; otherwise a detached copy is made to differentiate against.
        num_projections: random vectors per sample; the estimate's variance falls as ``1/P``.
        exact: compute the full Jacobian norm instead, with one backward pass per output
            coordinate (``d`` passes). Meant for small models and for checking the estimator.
        generator: random generator for the projections, for reproducible estimates.
        create_graph: keep the graph of the VJPs so the result can be differentiated w.r.t. the
            parameters of ``fn`` (use as a regulariser); otherwise the result is detached.
        projection: ``"rademacher"`` (default, lower variance) or ``"gaussian"``.
        reduction: ``"mean"`` over the batch (a scalar) or ``"none"`` (``[B]`` per-sample values).
    """
    if not inputs.is_floating_point():
        raise TypeError(
            f"inputs must be floating point, got {inputs.dtype}; for token ids pass the input "
            "embeddings and an fn that takes embeddings"
        )
    x = inputs if inputs.requires_grad else inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
    return gc_from_outputs(
        out,
        x,
        num_projections,
        exact=exact,
        generator=generator,
        create_graph=create_graph,
        projection=projection,
        reduction=reduction,
    )


def gc_from_outputs(
    outputs: Tensor,
    inputs: Tensor,
    num_projections: int = 1,
    *,
    exact: bool = False,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
    projection: Projection = "rademacher",
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """`geometric_complexity` of outputs already computed from ``inputs`` (which must require grad): a training
    step that has its features reuses its own forward pass instead of running ``fn`` again."""
    if num_projections < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    batch = inputs.shape[0]
    if outputs.shape[0] != batch:
        raise ValueError(f"fn must keep the batch dimension {batch}, got {tuple(outputs.shape)}")
    with torch.enable_grad():
        out = outputs.reshape(batch, -1)
        if exact:
            eye = torch.eye(out.shape[1], dtype=out.dtype, device=out.device)
            cotangents = (eye[j].expand_as(out) for j in range(out.shape[1]))
            num_passes, divisor = out.shape[1], 1
        else:
            cotangents = (_random_cotangent(out, projection, generator) for _ in range(num_projections))
            num_passes, divisor = num_projections, num_projections
        total = inputs.new_zeros(batch)
        for i, v in enumerate(cotangents):
            (grad,) = torch.autograd.grad(
                out,
                inputs,
                grad_outputs=v,
                retain_graph=create_graph or i < num_passes - 1,
                create_graph=create_graph,
                allow_unused=True,
            )
            if grad is not None:
                total = total + grad.reshape(batch, -1).pow(2).sum(1)
    per_sample = total / divisor
    if not create_graph:
        per_sample = per_sample.detach()
    return per_sample.mean() if reduction == "mean" else per_sample


def gc_penalty(
    fn: Callable[[Tensor], Tensor],
    inputs: Tensor,
    num_projections: int = 1,
    *,
    generator: torch.Generator | None = None,
    projection: Projection = "rademacher",
) -> Tensor:
    """Differentiable GC estimate to add to a loss as ``gc_lambda * gc_penalty(fn, x)``.

    One projection per sample is usually enough for a regulariser: the estimate is unbiased, so
    its noise averages out over SGD steps like minibatch noise does. The cost is one extra
    backward pass to build the VJP plus the double-backward through it.
    """
    return geometric_complexity(
        fn,
        inputs,
        num_projections,
        generator=generator,
        create_graph=True,
        projection=projection,
    )


class GeometricComplexityRegularizer(nn.Module):
    """``gc_lambda * gc_penalty(fn, inputs)`` as a module; `penalty_and_gc` also returns the GC estimate itself.

    ``fn`` is passed per call (rather than stored) because it usually closes over the current
    batch's non-differentiable arguments (attention masks and the like).
    """

    def __init__(
        self,
        gc_lambda: float = 0.01,
        num_projections: int = 1,
        projection: Projection = "rademacher",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.gc_lambda = float(gc_lambda)
        self.num_projections = num_projections
        self.projection: Projection = projection
        self.generator = generator

    def forward(self, fn: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
        return self.penalty_and_gc(fn, inputs)[0]

    def penalty_and_gc(self, fn: Callable[[Tensor], Tensor], inputs: Tensor) -> tuple[Tensor, Tensor]:
        """``(gc_lambda * GC, GC detached)``: the penalty to add to the loss, and the estimate to log (a tensor on
        the inputs' device, so reading it waits until the caller logs)."""
        gc = gc_penalty(fn, inputs, self.num_projections, generator=self.generator, projection=self.projection)
        return self.gc_lambda * gc, gc.detach()

    def extra_repr(self) -> str:
        return f"gc_lambda={self.gc_lambda}, num_projections={self.num_projections}, projection={self.projection}"
