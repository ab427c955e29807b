"""Collapse-aware training loss: cross-entropy plus a within-class variability (NC1-style) penalty.

Li et al. find that the more a model's features collapse on the downstream training data, the
better it transfers. :class:`CollapseLoss` turns that into a training target by adding
``collapse_lambda * collapse_penalty(z, y)`` to the cross-entropy, where ``z`` are the features the head sees.

The penalty is ``tr(Σ_W) / tr(Σ_B)`` on the batch (definitions in :func:`collapse_penalty`). It is
the trace-ratio cousin of NC1 = tr(Σ_W Σ_B^†)/K: no pseudo-inverse (cheap, smooth, stable under
rank-deficient Σ_B), yet with the same fixed point (zero exactly when every class is collapsed to
its mean).

Multi-process training
----------------------
The penalty is a ratio of batch statistics, so the mean of per-rank penalties is *not* the penalty
of the global batch. With ``sync=True`` the per-class sufficient statistics are all-reduced with
autograd, so every rank computes the penalty of the global batch.

Gradient scaling under DDP (derived here, checked numerically in ``tests/test_loss.py`` with two
gloo processes). Let ``W`` be the world size, ``z_r`` the features of rank ``r`` and ``L`` the
global penalty, identical on every rank. An all-reduce SUM with autograd
(``torch.distributed.nn.functional.all_reduce``, or the functional collectives that replace it)
back-propagates by all-reducing (SUM) the incoming gradient. Every rank sends back the same
``∂L/∂(reduced stats)``, so rank ``r`` receives ``W · ∂L/∂z_r`` for its local features, and its
local parameter gradient is ``W · (∂L/∂z_r)(∂z_r/∂θ)``. DDP *averages* gradients over ranks:
``(1/W) Σ_r W (∂L/∂z_r)(∂z_r/∂θ) = Σ_r (∂L/∂z_r)(∂z_r/∂θ) = dL/dθ``, the single-process gradient
of the global-batch penalty. So: no extra scaling; the factor ``W`` from the all-reduce backward
cancels DDP's ``1/W``. The cross-entropy stays a local mean, and DDP's averaging of shards
with equal numbers of labelled rows turns it into the global mean, so ``CE + lam * penalty`` has
exactly the global-batch gradient. If you reduce gradients by SUM yourself instead of using DDP,
divide the penalty by ``W``. If a trainer multiplies the loss by the world size, as transformers'
Trainer does when a ``compute_loss_func`` (or a model accepting loss kwargs) gets
``num_items_in_batch`` with ``average_tokens_across_devices``, it scales the penalty by ``W`` too:
divide the penalty by ``W`` there.

Gradient accumulation
---------------------
The penalty is computed per micro-batch from that micro-batch's class means, so with ``M``
accumulation steps the optimised objective is the mean over micro-batches of
``CE_m + lam * penalty_m``, which is what transformers' Trainer does with a per-batch loss (it
divides each micro-batch loss by ``M``). For the cross-entropy with equal micro-batches this equals
the full-batch loss; for the penalty it does not, because a ratio of batch statistics is not
additive. An exact alternative costs one extra forward pass over the accumulation window: compute
the global statistics without grad first, then back-propagate per micro-batch through a surrogate
whose gradient uses those frozen global statistics (the penalty's gradient w.r.t. ``z_i`` depends
only on ``z_i`` and the global statistics). We keep the per-micro-batch semantics: it is the usual
trainer contract, and large micro-batches make the two nearly equal.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_finite, check_labels
from .distributed import world

__all__ = ["collapse_penalty", "CollapseLoss"]


def _all_reduce_with_grad(tensor: Tensor) -> Tensor:
    """Sum over the default process group; the backward pass sums the gradients over ranks.

    ``torch.distributed.nn.functional.all_reduce`` is deprecated in recent torch in favour of the
    functional collectives, which carry the same autograd rule (backward = all-reduce SUM) once
    ``all_reduce_backward`` is registered. Use those where they exist, the old one otherwise.
    """
    from torch.distributed import _functional_collectives as funcol

    if hasattr(funcol, "all_reduce_backward"):
        return funcol.wait_tensor(funcol.all_reduce(tensor, "sum", torch.distributed.group.WORLD))
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(tensor)


def collapse_penalty(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    *,
    eps: float = 1e-8,
    sync: bool = True,
    ignore_index: int = -100,
) -> Tensor:
    r"""Within-class scatter relative to between-class scatter of a batch, ``tr(Σ_W) / tr(Σ_B)``.

    Example: features that sit on their class means have no within-class scatter.

    >>> import torch
    >>> from skipcollapse import collapse_penalty
    >>> means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> collapse_penalty(means[labels], labels).item()
    0.0
    >>> spread = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [0.1, 0.0], [-0.1, 0.0]])
    >>> round(collapse_penalty(means[labels] + spread, labels).item(), 4)
    0.02

    Definitions (only the ``N`` rows whose label is not ``ignore_index``; only the ``K_p`` classes
    present among them; ``μ_k`` the batch mean of class ``k``)::

        tr(Σ_W) = (1/N)   Σ_i ‖z_i − μ_{y_i}‖²
        tr(Σ_B) = (1/K_p) Σ_k ‖μ_k − μ_G‖²,   μ_G = (1/K_p) Σ_k μ_k   (mean of the class means)

    Why this form:

    * Scale-invariant: multiplying ``z`` by ``c > 0`` multiplies both traces by ``c²``, so ``lam``
      does not depend on the feature scale (and the model cannot lower the penalty by shrinking
      all features, which a bare ``tr(Σ_W)`` would invite).
    * Width-agnostic: both traces are sums over feature dimensions, so the ratio does not grow with
      ``d`` (duplicating every feature column leaves it unchanged).
    * Cheap: per-class counts, sums and sums of squared norms, ``O(B d)``; no pseudo-inverse.
    * Batch class means are good enough once the batch holds at least two classes; a class with a
      single sample in the batch has zero within-class scatter but still counts as a class mean.
    * ``μ_G`` is the mean of the class means, not the sample mean, so the between-class spread
      weighs every present class equally whatever the batch's class imbalance.

    The result is exactly ``0`` when every class's features are identical (perfect collapse) and
    ``> 0`` otherwise. With fewer than two classes present the ratio is undefined and the result is
    a zero that stays connected to ``features`` (so ``backward`` and DDP see every parameter).

    Implementation: per-class sufficient statistics ``n_k``, ``S_k = Σ d_i``, ``Q_k = Σ ‖d_i‖²`` of
    the shifted features ``d_i = z_i − r_{y_i}``, so ``N tr(Σ_W) = Σ_k (Q_k − ‖S_k‖² / n_k)``. The
    shift ``r_k`` (elementwise max of class ``k``'s features, no grad; the scatter does not depend
    on it) keeps the subtraction from cancelling catastrophically when features have a large common
    offset, and makes perfectly collapsed classes give exactly ``d_i = 0``. These statistics add up
    across processes: with ``sync=True`` and an initialised process group of size > 1 they are
    all-reduced with autograd, so every rank returns the penalty of the global batch and DDP yields
    its exact gradient (see the module docstring for the derivation). Every rank must call this
    function with the same ``num_classes`` and ``sync``, since it runs collectives.

    Args:
        features: ``[B, d]`` features the head sees.
        labels: ``[B]`` integer class labels; rows equal to ``ignore_index`` are excluded.
        num_classes: number of classes ``K``; inferred as ``max(label) + 1`` (globally) if None.
        eps: relative guard for the denominator, which is ``max(tr Σ_B, eps · (tr Σ_W + tr Σ_B))``;
            scale-invariant, and only active when the class means (nearly) coincide, where it
            caps the penalty at ``1 / eps``.
        sync: all-reduce the statistics over the default process group when one is initialised.
        ignore_index: label value marking rows to leave out, as in ``F.cross_entropy``.

    Returns:
        A scalar tensor in ``features``' dtype promoted to at least float32.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [B, d], got shape {tuple(features.shape)}")
    labels = check_labels(labels, features.shape[0], num_classes, ignore_index)
    check_finite(features)
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be [B]={features.shape[0]}, got shape {tuple(labels.shape)}")
    world_size = world()[1] if sync else 1
    dtype = torch.promote_types(features.dtype, torch.float32)

    keep = labels != ignore_index
    z = features[keep].to(dtype)
    y = labels[keep].long()

    if num_classes is None:
        local_max = y.max() if y.numel() else torch.tensor(-1, device=y.device)
        k_max = local_max.reshape(1).clone()
        if world_size > 1:
            torch.distributed.all_reduce(k_max, op=torch.distributed.ReduceOp.MAX)
        num_classes = int(k_max.item()) + 1
    num_classes = max(num_classes, 0)
    d = z.shape[1]

    # Shift per class (no grad): elementwise max over the class's samples, common to all ranks.
    shift = torch.full((num_classes, d), -math.inf, dtype=dtype, device=z.device)
    shift.scatter_reduce_(0, y[:, None].expand(-1, d), z.detach(), reduce="amax", include_self=True)
    if world_size > 1:
        torch.distributed.all_reduce(shift, op=torch.distributed.ReduceOp.MAX)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros((), dtype=dtype, device=z.device))

    centred = z - shift[y]
    counts = torch.zeros(num_classes, dtype=dtype, device=z.device).index_add_(0, y, torch.ones_like(y, dtype=dtype))
    sums = torch.zeros(num_classes, d, dtype=dtype, device=z.device).index_add(0, y, centred)
    sq = torch.zeros(num_classes, dtype=dtype, device=z.device)
    sq = sq.index_add(0, y, centred.pow(2).sum(1))
    if world_size > 1:
        torch.distributed.all_reduce(counts)  # no autograd needed: counts are constants
        sums = _all_reduce_with_grad(sums)
        sq = _all_reduce_with_grad(sq)

    present = counts > 0
    if int(present.sum().item()) < 2:
        return features.sum() * 0
    n = counts[present]
    s = sums[present]
    within = (sq[present] - s.pow(2).sum(1) / n).sum().clamp_min(0) / n.sum()
    means = shift[present] + s / n[:, None]
    between = (means - means.mean(0)).pow(2).sum(1).mean()

    denom = torch.maximum(between, eps * (within + between)).clamp_min(torch.finfo(dtype).tiny)
    return within / denom


class CollapseLoss(nn.Module):
    """``F.cross_entropy(logits, labels) + collapse_lambda * collapse_penalty(features, labels)``.

    ``features`` are the features the head saw for these ``logits`` (``z`` in the design). With
    ``collapse_lambda == 0`` the result is exactly ``F.cross_entropy`` (the penalty is not computed at all), so
    the loss is a drop-in for plain fine-tuning. Rows labelled ``-100`` are ignored by both terms.

    >>> import torch
    >>> from skipcollapse import CollapseLoss
    >>> logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])
    >>> loss = CollapseLoss(collapse_lambda=0.0)
    >>> torch.equal(loss(logits, torch.zeros(2, 4), labels), torch.nn.functional.cross_entropy(logits, labels))
    True

    ``labels`` are checked as the penalty and the metrics check them: ``[N]`` class ids of any integer dtype (used
    as int64), each in ``[0, C)`` for ``C`` logit columns or ``-100``; anything else is a ValueError that says what
    to pass. A batch without a labelled row gives ``0`` connected to the logits (not torch's NaN mean), so
    ``backward`` and DDP still see every parameter.

    ``num_items_in_batch`` (what transformers' Trainer passes under gradient accumulation): the cross-entropy is
    then a sum over that many items and the penalty is weighted by this micro-batch's share of them, so the
    optimised objective is the window's mean CE plus λ times the mean of the micro-batch penalties.

    `loss_and_parts` returns the loss with its detached parts for logging (what `CollapseLossFunc` logs).
    """

    ignore_index: int = -100

    def __init__(
        self, collapse_lambda: float = 0.1, num_classes: int | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if not collapse_lambda >= 0:  # also refuses NaN
            raise ValueError(f"collapse_lambda must be >= 0, got {collapse_lambda}")
        self.collapse_lambda = float(collapse_lambda)
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)

    def forward(
        self, logits: Tensor, features: Tensor | None, labels: Tensor, num_items_in_batch: Tensor | int | None = None
    ) -> Tensor:
        return self.loss_and_parts(logits, features, labels, num_items_in_batch)[0]

    def loss_and_parts(
        self, logits: Tensor, features: Tensor | None, labels: Tensor, num_items_in_batch: Tensor | int | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and its parts, detached: ``{"ce": micro-batch mean CE, "collapse_penalty": ...}`` (the penalty
        is NaN when ``collapse_lambda == 0``: not computed). The parts stay tensors on the loss's device, so reading
        them (a device sync) waits until the caller logs, not every step."""
        labels = self._checked_labels(logits, labels)
        common = dict(ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)
        labelled = (labels != self.ignore_index).sum()
        if not bool(labelled):
            # nothing to average (torch's mean gives NaN, and so does a sum over num_items_in_batch == 0): the CE
            # is a zero that stays connected to the logits; its logged part is NaN, which CollapseLossFunc weights
            # by the micro-batch's 0 items
            ce, mean_ce, share = logits.sum() * 0, torch.full_like(logits.sum().detach(), math.nan), 0.0
        elif num_items_in_batch is None:
            ce = F.cross_entropy(logits, labels, **common)
            mean_ce, share = ce, 1.0
        else:
            ce = F.cross_entropy(logits, labels, reduction="sum", **common) / num_items_in_batch
            share = labelled / num_items_in_batch
            with torch.no_grad():
                mean_ce = F.cross_entropy(logits, labels, **common)
        if self.collapse_lambda == 0:
            return ce, {"ce": mean_ce.detach(), "collapse_penalty": torch.full_like(mean_ce.detach(), math.nan)}
        if features is None:
            raise ValueError("collapse_lambda > 0 needs the head-input features of these logits")
        penalty = collapse_penalty(features, labels, self.num_classes, ignore_index=self.ignore_index)
        parts = {"ce": mean_ce.detach(), "collapse_penalty": penalty.detach()}
        return ce + self.collapse_lambda * share * penalty, parts

    def _checked_labels(self, logits: Tensor, labels: Tensor) -> Tensor:
        """`labels` as int64 class ids of the rows of `logits`, checked as the penalty and the metrics check them
        (`check_labels`) before the cross-entropy sees them: torch's own errors ("expected target dtype to be Long
        or Byte", "0D or 1D target tensor expected", "Target 3 is out of bounds") say neither which tensor is wrong
        nor what to change, and on CUDA an out-of-range label is a device-side assert."""
        if logits.dim() != 2:
            raise ValueError(f"logits must be [N, C] (class scores of one example per row), got {tuple(logits.shape)}")
        if isinstance(labels, Tensor) and labels.dim() == 2 and labels.shape[1] == 1:
            raise ValueError(
                f"labels must be a 1-D tensor [N] of class ids, got shape {tuple(labels.shape)}; "
                "pass labels.squeeze(1) (or have the collator return one class id per example)"
            )
        if isinstance(labels, Tensor) and labels.dim() == 1 and labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels has {labels.shape[0]} rows but logits have {logits.shape[0]}; pass one class id per example"
            )
        return check_labels(labels, logits.shape[0], logits.shape[1], self.ignore_index)

    def extra_repr(self) -> str:
        return (
            f"collapse_lambda={self.collapse_lambda}, num_classes={self.num_classes}, "
            f"label_smoothing={self.label_smoothing}"
        )
