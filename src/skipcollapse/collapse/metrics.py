"""Exact, streaming, distributed neural-collapse (NC) metrics.

Every NC metric below is a function of a few *sufficient statistics* of the features z (rows of Z):

* per-class counts n_k,
* per-class feature sums s_k = Σ_{i∈k} z_i,
* per-class sums of squared norms q_k = Σ_{i∈k} ‖z_i‖²,
* one Gram matrix G = ZᵀZ (d×d).

They are additive over batches and over processes, so the metrics are computed in a single pass
over the data, merged by summation (`CollapseMetrics.merge`) and synchronised across processes with
one ``all_reduce(SUM)`` (`CollapseMetrics.sync`) -- features are never stored or gathered. The cost
of a pass is about one float64 GEMM (the Gram update); everything else is O(N·d) or independent of
N. Accumulation is in float64 because the within-class scatter is recovered from raw moments
(G − Σ_k n_k μ_k μ_kᵀ): the relative round-off of that subtraction is about eps·‖μ‖²/Var, which is
harmless in float64 and would not be in float32.

Definitions (K' = number of classes *present* in the data, μ_k class means, μ_G the mean of all
samples -- the global *sample* mean, so classes weigh by their counts in μ_G):

* Σ_W = (1/N) Σ_k Σ_{i∈k} (z_i − μ_k)(z_i − μ_k)ᵀ,  Σ_B = (1/K') Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ.
* ``nc1``  = (1/K') tr(Σ_W Σ_B^†)  (Papyan et al.; the metric Li et al. use).
* ``cdnv`` = mean over class pairs i≠j of (Var_i + Var_j) / (2‖μ_i − μ_j‖²) with
  Var_k = E_{i∈k}‖z_i − μ_k‖² (Galanti et al.). Ordered and unordered pairs give the same mean.
* ``nc2_equinorm``   = std(‖μ_k − μ_G‖) / mean(‖μ_k − μ_G‖)  (population std, correction 0).
* ``nc2_equiangle``  = std over i<j of cos_ij, cos_ij the cosine between μ_i − μ_G and μ_j − μ_G
  (population std, so it is defined -- and 0 -- with two classes).
* ``nc2_etf_distance`` = mean over i<j of |cos_ij + 1/(K'−1)|  (0 for a simplex ETF).
* ``nc3``  = ‖W/‖W‖_F − M/‖M‖_F‖²_F, M the centred means μ_k − μ_G stacked as rows, W the head's
  rows of the same classes.
* ``nc4``  = fraction of samples whose nearest-class-mean prediction differs from the head's
  prediction (argmax of the logits). See `CollapseMetrics` for why this needs a second pass.

Degenerate geometry is reported, not hidden: two coinciding class means make ``cdnv`` inf, a class
mean equal to μ_G makes the cosines (and so ``nc2_equiangle``/``nc2_etf_distance``) NaN, and all
class means coinciding raises (every metric is undefined then).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .checks import check_labels, short_list
from .distributed import is_distributed

__all__ = ["CollapseMetrics", "collapse_metrics"]

_F64 = torch.float64


def _canonical_device(device: torch.device | str) -> torch.device:
    """`cuda` and `cuda:0` name the same device when 0 is current; compare devices in one form."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _rebased_sq_norms(m: CollapseMetrics, delta: Tensor, n: Tensor) -> Tensor:
    """Σ_{i∈k} ‖z_i − r'_k‖² from the statistics about r_k (delta = r'_k − r_k, n the counts as float64)."""
    return m._sq_norms - 2 * (m._sums * delta).sum(dim=1) + n * delta.square().sum(dim=1)


def _rebased_sums(m: CollapseMetrics, delta: Tensor, n: Tensor) -> Tensor:
    """Σ_{i∈k} (z_i − r'_k) from the statistics about r_k."""
    return m._sums - n[:, None] * delta


def _rebased_gram(m: CollapseMetrics, delta: Tensor, n: Tensor) -> Tensor:
    """Σ_i (z_i − r'_{y_i})(z_i − r'_{y_i})ᵀ from the statistics about r_k."""
    cross = m._sums.T @ delta
    return m._gram - cross - cross.T + (delta * n[:, None]).T @ delta


@dataclass(frozen=True)
class _State:
    """One tensor of `CollapseMetrics`' state. `_STATES` declares them all, once: ``reset``, allocation, ``_copy``,
    ``merge`` and ``sync`` act on what it lists, so a new statistic is one row there plus its ``update``."""

    name: str
    """The attribute; None until allocated."""
    reduce: str
    """How two metrics' values combine, in ``merge`` and in ``sync``:

    * ``"sum"``: added as they are;
    * ``"rebase"``: a statistic about the per-class shifts r_k (``_shift``): re-based onto common shifts with
      `rebase` (exact algebra), then added;
    * ``"shift"``: the shifts r_k themselves. ``merge`` keeps this metric's and takes the other's for the classes this
      one has not seen; ``sync`` takes, per class, the count-weighted mean of every process's shift;
    * ``"frozen"``: set by ``begin_nc4_pass`` from the (synced) statistics and only read after: copies share it,
      ``merge`` refuses frozen metrics and ``sync`` keeps it as it is (it is global already).
    """
    shape: Callable[[int, int], tuple[int, ...]] | None = None
    """Its shape from (number of classes K, feature width d): it is allocated as zeros of that shape. None for the
    frozen states, which ``begin_nc4_pass`` computes."""
    dtype: torch.dtype = _F64
    """Integer states travel through ``sync`` as float64 (exact below 2^53) and are rounded back."""
    nc4: bool = False
    """A second-pass state: allocated by ``begin_nc4_pass`` (None before). The others are allocated as soon as the
    width and device are known, and are what ``merge`` adds."""
    rebase: Callable[[CollapseMetrics, Tensor, Tensor], Tensor] | None = None
    """For ``"rebase"`` states: (metric, delta = r' − r [K, d], counts n [K] as float64) -> the value about r'."""

    def dims(self, num_classes: int, width: int) -> tuple[int, ...]:
        """The shape of this (allocated) state for K classes and width d."""
        assert self.shape is not None, f"{self.name} is computed by begin_nc4_pass, not allocated"
        return self.shape(num_classes, width)


_STATES: tuple[_State, ...] = (
    # first pass: every statistic is of z − r_y, see `CollapseMetrics.reset`
    _State("_counts", "sum", lambda k, d: (k,), torch.int64),  # n_k
    _State("_sq_norms", "rebase", lambda k, d: (k,), rebase=_rebased_sq_norms),  # Σ_{i∈k} ‖z_i − r_k‖²
    _State("_sums", "rebase", lambda k, d: (k, d), rebase=_rebased_sums),  # Σ_{i∈k} (z_i − r_k)
    _State("_gram", "rebase", lambda k, d: (d, d), rebase=_rebased_gram),  # ZᵀZ of the shifted rows
    _State("_shift", "shift", lambda k, d: (k, d)),  # r_k (zero until class k is seen)
    # NC4 second pass: the frozen class means (about their global mean) and the disagreement counts
    _State("_nc4_classes", "frozen", dtype=torch.int64),  # [K'] indices of the present classes
    _State("_nc4_shift", "frozen"),  # [d] the global mean the means are taken about
    _State("_nc4_means", "frozen"),  # [K', d]
    _State("_nc4_mean_sq", "frozen"),  # [K'] ‖μ_k‖²
    _State("_nc4_disagree", "sum", lambda k, d: (), torch.int64, nc4=True),  # samples whose NCC ≠ the head
    _State("_nc4_total", "sum", lambda k, d: (), torch.int64, nc4=True),  # samples of the second pass
)
_SUMMED = tuple(state for state in _STATES if state.reduce in ("sum", "rebase"))  # what sync all_reduces, in order


class CollapseMetrics:
    """Streaming neural-collapse metrics over (features, labels) batches, torchmetrics-style.

    ``update`` accumulates the sufficient statistics (see the module docstring), ``compute``
    turns them into ``nc1``, ``cdnv``, ``nc2_equinorm``, ``nc2_equiangle``, ``nc2_etf_distance``,
    plus ``nc3`` when a head weight is given and ``nc4`` after a second pass. ``reset`` clears,
    ``merge`` adds another instance's statistics, ``sync`` returns a copy with the statistics
    summed over all processes.

    **Why NC4 takes a second pass.** The nearest-class-mean (NCC) prediction
    argmin_k ‖z − μ_k‖² = argmax_k (2μ_kᵀz − ‖μ_k‖²) is itself a linear classifier whose weights are
    the *final* class means. Whether it agrees with the head's argmax is a per-sample, non-linear
    (argmax) question about two linear classifiers, which no moment of the features answers -- so
    NC4 cannot be exact in one pass without keeping the features. The exact design used here:

    1. first pass: ``update(features, labels)`` over the data;
    2. ``begin_nc4_pass()`` freezes the (globally synchronised) class means;
    3. second pass: ``nc4_update(features, logits)`` over the same data counts disagreements;
    4. ``compute()`` then also returns ``nc4``.

    ``update`` accepts ``logits`` because eval loops have them at hand, but one pass cannot use
    them: they are only shape-checked, never stored, and ``compute`` warns once if logits were
    seen but no NC4 pass happened. After ``begin_nc4_pass`` the class statistics are frozen and ``update`` raises
    (so that a forgotten ``reset`` between epochs cannot silently mix epochs); ``reset`` unfreezes.

    **State and devices.** All statistics are float64 on one device: the ``device`` given here, or
    else that of the first non-empty batch; the first batch also fixes the feature width unless
    ``num_features`` is given. Later batches with another width or device raise ``ValueError``
    (moving features silently between devices would hide a costly transfer); other float dtypes
    are upcast to float64, so mixing float32 and bfloat16 batches is fine.

    **Absent classes.** Metrics are over the classes present (n_k > 0), with one warning naming the
    absent ones; fewer than two present classes raise ``ValueError`` in ``compute`` (every NC
    metric compares classes). ``num_classes=1`` is allowed at construction for uniform code paths.

    **Distributed.** ``compute(sync=True)`` (the default) and ``begin_nc4_pass(sync=True)`` are
    collective when ``torch.distributed`` is initialised with more than one process: every rank
    must call them, including ranks that saw no data (their width is agreed on by a small
    all_reduce first, so they need no ``num_features``). Statistics are summed into a copy; the
    local state is never modified, so ``compute`` can be called again and updates can continue.
    Works with gloo (CPU tensors) and NCCL (tensors are reduced on the current CUDA device).

    Args:
        num_classes: K, the number of classes; labels must lie in [0, K).
        device: where the statistics live; features must be on this device.
        num_features: the feature width d, if known up front.
        process_group: the group to synchronise over (default: the world).
    """

    # The state tensors of `_STATES` (None until allocated), annotated for type checkers; an import-time check below
    # keeps the two lists equal.
    _counts: Tensor | None
    _sq_norms: Tensor | None
    _sums: Tensor | None
    _gram: Tensor | None
    _shift: Tensor | None
    _nc4_classes: Tensor | None
    _nc4_shift: Tensor | None
    _nc4_means: Tensor | None
    _nc4_mean_sq: Tensor | None
    _nc4_disagree: Tensor | None
    _nc4_total: Tensor | None

    def __init__(
        self,
        num_classes: int,
        device: torch.device | str | None = None,
        *,
        num_features: int | None = None,
        process_group: Any = None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if num_features is not None and (not isinstance(num_features, int) or num_features < 1):
            raise ValueError(f"num_features must be an integer >= 1, got {num_features!r}")
        self.num_classes = num_classes
        self.process_group = process_group
        self._fixed_device = None if device is None else _canonical_device(device)
        self._num_features = num_features
        self._warned_absent: tuple[int, ...] | None = None
        self._warned_logits = False
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Drop all statistics (and the frozen NC4 means); width and device fixed at construction stay.

        The state is the tensors declared in `_STATES`. Every statistic is of z − r_y, r_k being class k's mean in
        the first batch that held class k: an offset common to the features, or class means far from the origin,
        then cost no precision (the Gram form ‖z‖² − ‖μ‖² would otherwise cancel them away). NC metrics do not
        depend on the shifts; statistics with different shifts are rebased (exact algebra) before they are added.
        """
        for state in _STATES:
            setattr(self, state.name, None)
        self._device: torch.device | None = self._fixed_device
        self._width: int | None = self._num_features
        self._logits_seen = False
        if self._fixed_device is not None and self._num_features is not None:
            self._allocate(self._num_features, self._fixed_device)

    def _allocate(self, width: int, device: torch.device) -> None:
        """Fix width and device and allocate the first-pass states as zeros."""
        self._width, self._device = width, device
        self._zero_states(nc4=False)

    def _zero_states(self, nc4: bool) -> None:
        """Allocate the first-pass (or, with ``nc4``, the second-pass) states of `_STATES` as zeros."""
        assert self._width is not None and self._device is not None
        for state in _STATES:
            if state.shape is not None and state.nc4 == nc4:
                dims = state.dims(self.num_classes, self._width)
                setattr(self, state.name, torch.zeros(dims, dtype=state.dtype, device=self._device))

    @property
    def num_features(self) -> int | None:
        """The feature width d, or None while no data (and no ``num_features``) fixed it."""
        return self._width

    @property
    def device(self) -> torch.device | None:
        """Where the statistics live, or None while not fixed yet."""
        return self._device

    @property
    def num_samples(self) -> int:
        """Samples accumulated locally (not synchronised)."""
        return 0 if self._counts is None else int(self._counts.sum())

    # ------------------------------------------------------------ validation
    def _check_features(self, features: Tensor, name: str = "features") -> None:
        if not isinstance(features, Tensor) or features.dim() != 2:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"{name} must be a 2-D tensor [N, d], got {shape}")
        if not features.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {features.dtype}")
        width = features.shape[1]
        if self._width is not None and width != self._width:
            raise ValueError(
                f"{name} have width {width} but this metric was fixed to width {self._width} "
                "(by num_features or an earlier batch)"
            )
        if features.shape[0] == 0:
            return
        if self._device is not None and _canonical_device(features.device) != self._device:
            raise ValueError(
                f"{name} are on {features.device} but the statistics live on {self._device}; "
                "move the features (or create the metric with device=...)"
            )

    def _check_rows(self, rows: Tensor, n: int, name: str) -> None:
        if rows.shape[0] != n:
            raise ValueError(f"{name} has {rows.shape[0]} rows but features have {n}")

    @staticmethod
    def _check_finite(row_norms: Tensor, name: str = "features") -> None:
        """Reject rows with NaN/inf, found through their (squared) norms (NaN and ±inf propagate
        into the sum; float64 squares of float32 values cannot overflow), which ``update`` needs
        anyway -- a separate ``isfinite`` pass over the features would cost more than the rest of
        the O(N·d) work together."""
        bad = int((~torch.isfinite(row_norms)).sum())
        if bad:
            raise ValueError(
                f"{name} contain NaN or inf in {bad} of {row_norms.shape[0]} rows (or, for float64 "
                "input, values beyond 1e154 whose squares overflow); NC metrics of such features "
                "would be NaN"
            )

    def _check_labels(self, labels: Tensor, n: int) -> Tensor:
        return check_labels(labels, n, self.num_classes)

    def _check_logits(self, logits: Tensor, n: int) -> None:
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"logits must be a tensor [N, {self.num_classes}], got {shape}")
        self._check_rows(logits, n, "logits")

    # ---------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        """Accumulate a batch: ``features`` [N, d] (any float dtype), ``labels`` [N] in [0, K).

        Costs one float64 GEMM (ZᵀZ) plus O(N·d); no Python loop over classes or samples.
        The batch is validated in full before the state changes, so a rejected batch leaves the
        metric as it was. An empty batch (N = 0) is a no-op and fixes neither width nor device.
        ``logits`` [N, K] are shape-checked and not stored (see the class docstring on NC4).
        Labels on another device than the features are moved to the features' device.
        """
        if self._nc4_means is not None:
            raise RuntimeError(
                "the class statistics are frozen for the NC4 pass (begin_nc4_pass was called): "
                "use nc4_update(features, logits) for the second pass, or reset() to start over"
            )
        self._check_features(features)
        n = features.shape[0]
        labels = self._check_labels(labels, n)
        if logits is not None:
            self._check_logits(logits, n)
        if n == 0:
            return
        z = features.detach().to(_F64)
        self._check_finite(torch.linalg.vector_norm(z, dim=1))
        labels = labels.to(z.device)
        if self._counts is None:
            self._allocate(z.shape[1], _canonical_device(z.device))
        batch_counts = torch.bincount(labels, minlength=self.num_classes)
        new = (batch_counts > 0) & (self._counts == 0)
        if bool(new.any()):
            batch_sums = torch.zeros_like(self._sums).index_add_(0, labels, z)
            self._shift[new] = batch_sums[new] / batch_counts[new, None].to(_F64)
        z = z - self._shift[labels]
        row_sq_norms = torch.linalg.vector_norm(z, dim=1).square_()
        self._gram.addmm_(z.T, z)
        self._sums.index_add_(0, labels, z)
        self._sq_norms.index_add_(0, labels, row_sq_norms)
        self._counts += batch_counts
        if logits is not None:
            self._logits_seen = True

    # ------------------------------------------------------------------- NC4
    @torch.no_grad()
    def begin_nc4_pass(self, sync: bool = True) -> None:
        """Freeze the class means of the statistics so far and start counting NC4 disagreements.

        With ``sync`` and several processes the frozen means are the global ones (collective:
        every rank must call this, including ranks without data). Call ``nc4_update`` over the
        same data next. Raises if fewer than two classes are present.
        """
        state, present = self._state_and_present(
            sync, "begin_nc4_pass needs the first-pass statistics; no samples were seen"
        )
        n = state._counts[present].to(_F64)
        means = state._shift[present] + state._sums[present] / n[:, None]
        centre = (means * n[:, None]).sum(dim=0) / n.sum()
        means = means - centre  # distances to the means are taken about the global mean: no offset to cancel
        if self._width is None:
            self._width = means.shape[1]
        if self._device is None:
            self._device = means.device
        means = means.to(self._device)
        self._nc4_classes = present.to(self._device)
        self._nc4_shift = centre.to(self._device)
        self._nc4_means = means
        self._nc4_mean_sq = means.square().sum(dim=1)
        self._zero_states(nc4=True)

    @torch.no_grad()
    def nc4_update(self, features: Tensor, logits: Tensor) -> None:
        """Second pass: count samples whose nearest frozen class mean ≠ argmax of ``logits``.

        ``features`` [N, d] on the statistics' device, ``logits`` [N, K] from the head. The NCC
        ranges over the classes present in the first pass; a head prediction of an absent class
        therefore always counts as a disagreement. Ties go to the lower class index on both sides.
        """
        if self._nc4_means is None:
            raise RuntimeError("call begin_nc4_pass() after the first pass before nc4_update()")
        self._check_features(features)
        n = features.shape[0]
        self._check_logits(logits, n)
        if n == 0:
            return
        z = features.detach().to(_F64)
        self._check_finite(torch.linalg.vector_norm(z, dim=1))
        self._check_finite(torch.linalg.vector_norm(logits.detach().to(_F64), dim=1), "logits")
        z = z - self._nc4_shift  # the frozen means are about the global mean
        scores = torch.addmm(self._nc4_mean_sq, z, self._nc4_means.T, beta=-1.0, alpha=2.0)
        ncc = self._nc4_classes[scores.argmax(dim=1)]
        head = logits.detach().argmax(dim=1).to(ncc.device)
        self._nc4_disagree += (ncc != head).sum()
        self._nc4_total += n

    # ------------------------------------------------------------ merge/sync
    def _copy(self) -> CollapseMetrics:
        """A copy with its own state tensors (the frozen NC4 means, only ever read, are shared)."""
        out = CollapseMetrics.__new__(CollapseMetrics)
        out.__dict__.update(self.__dict__)
        for state in _STATES:
            value = getattr(self, state.name)
            if state.reduce != "frozen" and value is not None:
                setattr(out, state.name, value.clone())
        return out

    @torch.no_grad()
    def merge(self, other: CollapseMetrics) -> CollapseMetrics:
        """Add ``other``'s first-pass statistics to this one's (in place; returns ``self``).

        Both must have the same ``num_classes`` and width and be before their NC4 pass (merge
        first, then run the NC4 pass on the merged metric). ``other`` is moved to this device.
        """
        if not isinstance(other, CollapseMetrics):
            raise TypeError(f"can only merge a CollapseMetrics, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge metrics with num_classes {other.num_classes} into {self.num_classes}")
        if self._nc4_means is not None or other._nc4_means is not None:
            raise RuntimeError("merge the first-pass statistics before begin_nc4_pass()")
        if other._width is not None and self._width is not None and other._width != self._width:
            raise ValueError(f"cannot merge metrics of width {other._width} into width {self._width}")
        if other._counts is None:
            return self
        if self._counts is None:
            self._allocate(other._width, self._device or other._device)
        unseen = self._counts == 0
        self._shift[unseen] = other._shift.to(self._device)[unseen]
        summands = other._summands(self._shift)
        for state in _SUMMED:
            if not state.nc4:  # the second-pass states do not exist yet (merge refuses frozen metrics)
                getattr(self, state.name).add_(summands[state.name].to(self._device))
        self._logits_seen |= other._logits_seen
        return self

    def _summands(self, shift: Tensor) -> dict[str, Tensor]:
        """The allocated ``"sum"`` and ``"rebase"`` states, the latter re-based onto the per-class shifts `shift`
        [K, d] from self's: what this metric adds to another's about `shift`."""
        out = {}
        for state in _SUMMED:
            value = getattr(self, state.name)
            if state.reduce == "sum" and value is not None:
                out[state.name] = value
        if self._counts is not None:
            n = self._counts.to(_F64)
            delta = (shift.to(self._sums.device) - self._shift) * (n > 0)[:, None]  # [K, d], r'_k − r_k
            for state in _SUMMED:
                if state.reduce == "rebase":
                    assert state.rebase is not None
                    out[state.name] = state.rebase(self, delta, n)
        return out

    def _comm_device(self) -> torch.device:
        """Where the reduce buffers go: NCCL needs CUDA tensors, gloo takes the state's device.

        With a mixed backend ("cpu:gloo,cuda:nccl") the tensor's device picks the backend, so a
        rank without data should be given ``device=`` to match the others.
        """
        backend = str(dist.get_backend(self.process_group))
        if "nccl" not in backend:
            return self._device or torch.device("cpu")
        if backend == "nccl" or (self._device is None and torch.cuda.is_available()):
            return torch.device("cuda", torch.cuda.current_device())
        return self._device or torch.device("cpu")

    @torch.no_grad()
    def sync(self) -> CollapseMetrics:
        """Return a copy whose statistics are summed over all processes; ``self`` is unchanged.

        Collective when ``torch.distributed`` runs more than one process (every rank must call
        it); otherwise a plain copy. Two small all_reduces agree on ``num_classes`` and width
        (so ranks without data take part), one of the count-weighted shifts, then one all_reduce(SUM) of a flat
        float64 buffer of the summed states of `_STATES` (counts, squared norms, sums, Gram, NC4 counts), the
        statistics re-based onto the common shifts first. Counts travel as float64, exact below 2^53.
        """
        if not is_distributed(self.process_group):
            return self._copy()
        group, device = self.process_group, self._comm_device()
        k = self.num_classes
        width = self._width if self._width is not None else 0
        # max over [K, -K, d, -d'] gives max/min of K and of the known widths (unknown: d = 0, d' = ∞).
        big = 1 << 60
        shape = torch.tensor(
            [k, -k, width, -(width if self._width is not None else big)], dtype=torch.int64, device=device
        )
        dist.all_reduce(shape, op=dist.ReduceOp.MAX, group=group)
        k_max, k_min, d_max, d_min = shape[0].item(), -shape[1].item(), shape[2].item(), -shape[3].item()
        if k_max != k_min:
            raise ValueError(f"num_classes differs across processes (between {k_min} and {k_max})")
        if d_max != 0 and d_min != d_max:
            raise ValueError(f"feature width differs across processes (between {d_min} and {d_max})")
        out = self._copy()
        if d_max == 0:  # nobody saw data
            return out
        d = d_max
        frozen = self._nc4_means is not None
        # Common shifts: per class, the count-weighted mean of every process's shift (near the data, like each).
        weighted = torch.zeros(k, d + 1, dtype=_F64, device=device)
        if self._counts is not None:
            n = self._counts.to(device=device, dtype=_F64)
            weighted[:, :d] = self._shift.to(device) * n[:, None]
            weighted[:, d] = n
        dist.all_reduce(weighted, op=dist.ReduceOp.SUM, group=group)
        shift = weighted[:, :d] / weighted[:, d:].clamp_min(1)
        # One flat buffer of every summed state, in `_SUMMED` order; a state this rank lacks counts as zeros.
        summands = self._summands(shift.to(self._device)) if self._device is not None else {}
        all_dims = [state.dims(k, d) for state in _SUMMED]
        parts = [
            summands[state.name].to(device=device, dtype=_F64).flatten()
            if state.name in summands
            else torch.zeros(math.prod(dims), dtype=_F64, device=device)
            for state, dims in zip(_SUMMED, all_dims)
        ]
        buf = torch.cat(parts)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        home = self._device or device
        buf = buf.to(home)
        out._width, out._device = d, home
        offset = 0
        for state, dims in zip(_SUMMED, all_dims):
            part = buf[offset : offset + math.prod(dims)].view(dims)
            offset += part.numel()
            if state.nc4 and not frozen:
                continue
            setattr(out, state.name, part.clone() if state.dtype.is_floating_point else part.round().to(state.dtype))
        out._shift = shift.to(home)
        return out

    def _synced(self) -> CollapseMetrics:
        return self.sync() if is_distributed(self.process_group) else self

    def _state_and_present(self, sync: bool, empty_message: str) -> tuple[CollapseMetrics, Tensor]:
        """The (synced) statistics and the indices of the classes they saw; refuses no data or < 2 classes."""
        state = self._synced() if sync else self
        if state._counts is None or int(state._counts.sum()) == 0:
            raise ValueError(empty_message)
        present = torch.nonzero(state._counts > 0).flatten()
        if present.numel() < 2:
            raise ValueError(_too_few_classes_message(present.numel(), self.num_classes))
        return state, present

    # --------------------------------------------------------------- compute
    def compute(self, head_weight: Tensor | None = None, sync: bool = True) -> dict[str, float]:
        """The NC metrics of the statistics so far (see the module docstring for definitions).

        Args:
            head_weight: the head's weight [K, d]; adds ``nc3`` (rows of absent classes ignored).
            sync: sum the statistics over processes first (collective, see ``sync``). The local
                state is never modified.

        Returns ``nc1``, ``cdnv``, ``nc2_equinorm``, ``nc2_equiangle``, ``nc2_etf_distance``,
        ``nc3`` with ``head_weight``, and ``nc4`` after an NC4 pass that saw samples.
        Raises ``ValueError`` with no samples or fewer than two present classes.
        """
        state, present = self._state_and_present(sync, "no samples accumulated: call update() before compute()")
        if present.numel() < self.num_classes:
            absent = sorted(set(range(self.num_classes)) - set(present.tolist()))
            if tuple(absent) != self._warned_absent:
                self._warned_absent = tuple(absent)
                warnings.warn(
                    f"classes absent from the data: {short_list(absent)}; NC metrics are over the "
                    f"{present.numel()} classes present",
                    stacklevel=2,
                )
        if head_weight is not None:
            expected = (self.num_classes, state._width)
            if not isinstance(head_weight, Tensor) or tuple(head_weight.shape) != expected:
                shape = tuple(head_weight.shape) if isinstance(head_weight, Tensor) else head_weight
                raise ValueError(f"head_weight must have shape {list(expected)}, got {shape}")
            if not bool(torch.isfinite(head_weight.detach()).all()):
                raise ValueError(
                    "head_weight contains NaN or inf; NC3 of such a head is undefined (check the training run)"
                )
            head_weight = head_weight.detach().to(device=state._device, dtype=_F64)[present]
        results = _metrics_from_statistics(
            state._counts[present].to(_F64),
            state._sq_norms[present],
            state._sums[present],
            state._gram,
            head_weight,
            present.tolist(),
            state._shift[present],
        )
        if state._nc4_means is not None and int(state._nc4_total) > 0:
            results["nc4"] = int(state._nc4_disagree) / int(state._nc4_total)
        elif self._logits_seen and not self._warned_logits:
            self._warned_logits = True
            warnings.warn(
                "logits passed to update() are not stored: NC4 needs the final class means, so it "
                "takes a second pass (begin_nc4_pass(), then nc4_update(features, logits))",
                stacklevel=2,
            )
        return results


if set(CollapseMetrics.__annotations__) != {state.name for state in _STATES}:
    raise TypeError("CollapseMetrics' annotations must list exactly the states declared in _STATES")


def _too_few_classes_message(present: int, num_classes: int) -> str:
    return (
        f"NC metrics compare classes and need at least 2 classes present; "
        f"{present} of {num_classes} are present in the data"
    )


def variances_of(n: Tensor, sq_norms: Tensor, offsets: Tensor) -> Tensor:
    """Var_k = E‖z − μ_k‖² per class, from statistics about a shift r_k (offsets: μ_k − r_k)."""
    return (sq_norms / n - offsets.square().sum(dim=1)).clamp_min(0)


COINCIDING_MEANS_TOLERANCE = 1e-12
"""Class means closer than this, relative to the features' spread (RMS distance from the global mean, plus the
within-class spread), count as one point: about 1e4 float64 roundings, beyond what the statistics resolve."""


def _coinciding_means_check(centred: Tensor, variances: Tensor, classes: list[int]) -> None:
    """Refuse class means that (nearly) coincide: NC1, CDNV and NC2 divide by their distances and would report
    astronomically large numbers (1e32) instead of an error."""
    k = centred.shape[0]
    scale = centred.square().sum(dim=1).mean() + variances.mean()
    dist_sq = torch.cdist(centred, centred, compute_mode="donot_use_mm_for_euclid_dist").square()
    close = dist_sq <= COINCIDING_MEANS_TOLERANCE**2 * scale
    close &= ~torch.eye(k, dtype=torch.bool, device=centred.device)
    if bool(close.any()) or float(scale) == 0.0:
        i, j = torch.nonzero(torch.triu(close, diagonal=1))[0].tolist() if bool(close.any()) else (0, 1)
        raise ValueError(
            f"the means of classes {classes[i]} and {classes[j]} coincide (distance² {float(dist_sq[i, j]):.3g}, "
            f"feature spread² {float(scale):.3g}); NC metrics divide by the distances between class means and are "
            "undefined. Check the features (a constant or collapsed extractor?) and the labels"
        )


def _metrics_from_statistics(
    n: Tensor,
    sq_norms: Tensor,
    sums: Tensor,
    gram: Tensor,
    head_weight: Tensor | None,
    classes: list[int] | None = None,
    shift: Tensor | None = None,
) -> dict[str, float]:
    """NC metrics from the statistics of the K' present classes (n: [K'], sums: [K', d]).

    NC1 never forms a d×d pseudo-inverse: Σ_B = MᵀM with M the centred means scaled by 1/√K'
    (K'×d, rank ≤ K'), so with the thin SVD M = U S Vᵀ, Σ_B^† = V S⁻² Vᵀ and
    tr(Σ_W Σ_B^†) = Σ_j v_jᵀ Σ_W v_j / s_j², over the K'−1 leading directions with s_j² > d·eps·s_max²
    (torch.linalg.pinv's default convention on Σ_B's eigenvalues s_j²). The projections
    v_jᵀ Σ_W v_j = (v_jᵀ G v_j − Σ_k (s_kᵀ v_j)² / n_k) / N cost O(K' d²) without forming Σ_W.
    """
    k, d = sums.shape
    classes = classes if classes is not None else list(range(k))
    total = n.sum()
    offsets = sums / n[:, None]  # μ_k − r_k: the statistics are about per-class shifts r_k
    shift = shift if shift is not None else torch.zeros_like(offsets)
    means = (shift - shift[0]) + offsets  # class means up to one common translation, which no metric sees
    centred = means - (means * n[:, None]).sum(dim=0) / total  # rows μ_k − μ_G
    variances = variances_of(n, sq_norms, offsets)
    _coinciding_means_check(centred, variances, classes)
    _, sing, vh = torch.linalg.svd(centred / k**0.5, full_matrices=False)
    # Σ_k n_k (μ_k − μ_G) = 0, so M has rank ≤ K'−1: its K'-th singular value is rounding noise, which
    # dividing by s² would blow up. Beyond that, drop what pinv(Σ_B) would drop: eigenvalues s² below
    # d·eps·s_max² (the same convention as torch.linalg.pinv on the d×d Σ_B).
    keep = sing.square() > d * torch.finfo(_F64).eps * sing.max().square()
    keep[k - 1 :] = False
    v, sing = vh[keep].T, sing[keep]  # [d, r], [r]
    within_proj = (v * (gram @ v)).sum(dim=0) - ((sums @ v).square() / n[:, None]).sum(dim=0)
    nc1 = ((within_proj / total) / sing.square()).sum().clamp_min(0) / k

    norms_sq = centred.square().sum(dim=1)
    dots = centred @ centred.T
    # from differences, not ‖a‖² + ‖b‖² − 2a·b, which loses close pairs to cancellation
    dist_sq = torch.cdist(centred, centred, compute_mode="donot_use_mm_for_euclid_dist").square()
    off = ~torch.eye(k, dtype=torch.bool, device=sums.device)
    cdnv = ((variances[:, None] + variances[None, :]) / (2 * dist_sq))[off].mean()

    norms = norms_sq.sqrt()
    i, j = torch.triu_indices(k, k, offset=1, device=sums.device)
    cosines = dots[i, j] / (norms[i] * norms[j])
    values = {
        "nc1": nc1,
        "cdnv": cdnv,
        "nc2_equinorm": norms.std(correction=0) / norms.mean(),
        "nc2_equiangle": cosines.std(correction=0),
        "nc2_etf_distance": (cosines + 1.0 / (k - 1)).abs().mean(),
    }
    if head_weight is not None:
        w_norm = torch.linalg.matrix_norm(head_weight)
        if float(w_norm) == 0.0:
            raise ValueError("head_weight rows of the present classes are all zero; NC3 is undefined")
        values["nc3"] = (head_weight / w_norm - centred / torch.linalg.matrix_norm(centred)).square().sum()
    names = list(values)
    return dict(zip(names, torch.stack([values[name] for name in names]).tolist()))


def collapse_metrics(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    head_weight: Tensor | None = None,
    logits: Tensor | None = None,
) -> dict[str, float]:
    """One-shot NC metrics of in-memory ``features`` [N, d] and ``labels`` [N] (local, no sync).

    With ``logits`` [N, K] both NC4 passes run over the given features, so ``nc4`` is exact.
    """
    metric = CollapseMetrics(num_classes)
    metric.update(features, labels)
    if logits is not None:
        metric.begin_nc4_pass(sync=False)
        metric.nc4_update(features, logits)
    return metric.compute(head_weight=head_weight, sync=False)
