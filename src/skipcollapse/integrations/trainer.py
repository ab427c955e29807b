"""Collapse-aware training with the transformers Trainer.

Two ways in, the same loss:

* `CollapseLossFunc(model, collapse_lambda)` is a `compute_loss_func` for a plain `Trainer`: cross-entropy plus λ
  times the within-class collapse penalty of the head input z, read from the same forward pass.
* `CollapseTrainer(..., collapse_lambda=λ, gc_lambda=γ)` wires that in, logs the loss's parts (`ce`,
  `collapse_penalty`, `geometric_complexity`) next to `loss`, and adds the optional geometric-complexity
  regulariser, which needs the inputs that a `compute_loss_func` never sees.

Scaling. When the Trainer passes `num_items_in_batch` (the labelled examples of the whole accumulation window,
summed over processes when `average_tokens_across_devices`), it neither divides the loss by the accumulation
steps nor averages it over processes by itself. The cross-entropy is then a sum over `num_items_in_batch`, and the
penalty of each micro-batch is weighted by its share of the items, so that the optimised objective is the mean CE
over the window plus λ times the item-weighted mean of the micro-batch penalties, on one process or many (the
penalty's statistics are all-reduced with autograd, see `skipcollapse.collapse.loss`). The logged parts are weighted
the same way (by each micro-batch's labelled items) and averaged over processes, like the Trainer's own `loss`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .._torch_utils import device_of
from ..collapse.distributed import is_distributed
from ..collapse.features import HeadInputs, logits_of
from ..collapse.geometric_complexity import gc_from_outputs
from ..collapse.loss import CollapseLoss

LOGGED_PARTS = ("ce", "collapse_penalty", "geometric_complexity")
"""What `CollapseLossFunc` can log: one fixed set, so every process joins the same all-reduce when the Trainer logs,
whatever it recorded."""


class CollapseLossFunc:
    """`compute_loss_func` for `transformers.Trainer`: `CollapseLoss` of the logits and the head input z of the
    same forward pass (captured by `HeadInputs` for as long as this object lives).

    Args:
        model: the model the Trainer trains (a PeftModel with a SkipCollapse adapter, or any supported
            classifier: the head input is then captured with a hook).
        collapse_lambda: λ; 0 gives exactly the cross-entropy.
        num_classes: K for the penalty (inferred from the labels when None).
        head_module: the head's name, for architectures not discovered automatically.
        label_smoothing: of the cross-entropy, as in `F.cross_entropy` (`CollapseTrainer` passes the
            `label_smoothing_factor` of its `TrainingArguments`, which the Trainer never applies to a
            `compute_loss_func`).
    """

    def __init__(
        self,
        model: nn.Module,
        collapse_lambda: float = 0.1,
        num_classes: int | None = None,
        head_module: str | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        self.capture = HeadInputs(model, head_module)
        self.loss = CollapseLoss(collapse_lambda, num_classes, label_smoothing)
        # per part since the last log: (item-weighted sum, items), detached tensors, so no device sync per step
        self._parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def collapse_lambda(self) -> float:
        return self.loss.collapse_lambda

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        if labels is None:  # the Trainer passes inputs["labels"], whatever TrainingArguments.label_names says
            raise ValueError(
                "CollapseLossFunc got labels=None: the Trainer hands it the batch's 'labels' entry; have the dataset "
                "or collator return the class ids under the key 'labels'"
            )
        features = self.capture.latest if self.loss.collapse_lambda else None
        loss, parts = self.loss.loss_and_parts(logits_of(outputs), features, labels, num_items_in_batch)
        if torch.is_grad_enabled() and self.loss.collapse_lambda:
            self.add_to_step((labels != self.loss.ignore_index).sum(), **parts)
        return loss

    def add_to_step(self, items: torch.Tensor, **parts: torch.Tensor) -> None:
        """Add this micro-batch's parts, weighted by its labelled `items`, to the logged means (the loss's own parts,
        and parts computed elsewhere for the same micro-batch, e.g. the GC regulariser)."""
        unknown = sorted(set(parts) - set(LOGGED_PARTS))
        if unknown:
            raise ValueError(f"cannot log parts {unknown}; the logged parts are {list(LOGGED_PARTS)}")
        for name, value in parts.items():
            # float32 (MPS has no float64; counts stay exact to 2**24); a micro-batch without labelled items adds 0,
            # not its NaN mean
            count = items.float()
            weighted = torch.where(count > 0, value.detach().float() * count, torch.zeros_like(count))
            if name in self._parts:
                weighted, count = weighted + self._parts[name][0], count + self._parts[name][1]
            self._parts[name] = (weighted, count)

    def pop_parts(self) -> dict[str, float]:
        """Item-weighted mean of each part since the last call, over all processes (what `CollapseTrainer` logs;
        every process must call it, as the Trainer's logging does)."""
        distributed = is_distributed()
        if not (self._parts or distributed):
            return {}
        recorded = next(iter(self._parts.values()))[0] if self._parts else None
        device = recorded.device if recorded is not None else device_of(self.capture.head)
        totals = torch.zeros(len(LOGGED_PARTS), 2, device=device)  # per part: (item-weighted sum, items)
        for row, name in enumerate(LOGGED_PARTS):
            if name in self._parts:
                totals[row] = torch.stack(self._parts[name])
        if distributed:
            torch.distributed.all_reduce(totals)
        self._parts = {}
        return {name: float(total[0] / total[1]) for name, total in zip(LOGGED_PARTS, totals.cpu()) if total[1] > 0}


class CollapseTrainer(Trainer):
    """A `Trainer` that trains with the collapse-aware loss and logs its parts.

    The loss-shaping `TrainingArguments` hold as under a plain `Trainer`: `label_smoothing_factor` smooths the
    cross-entropy part (the Trainer's own `LabelSmoother` never runs when there is a `compute_loss_func`, so it is
    passed to the loss here); gradient accumulation and `average_tokens_across_devices` reach the loss through
    `num_items_in_batch` (see the module docstring). A `compute_loss_func` of your own replaces the collapse loss
    (`collapse_lambda` and `num_classes` then do nothing); as that function cannot be made to smooth its labels,
    `label_smoothing_factor` must then be 0, or the function a `CollapseLossFunc` with the same `label_smoothing`.

    Args:
        collapse_lambda: λ of the collapse penalty (0: plain cross-entropy).
        gc_lambda: weight of the geometric-complexity regulariser GC(z; x) (0: off), added to the loss of
            `CollapseLossFunc` or of your own `compute_loss_func`. It costs one extra
            backward pass per step (a vector-Jacobian product, differentiated again), so every op of the model
            needs a double backward: load transformers models with `attn_implementation="eager"`.
        gc_projections: random projections per step for the GC estimate.
        num_classes: K for the penalty; inferred from the labels when None.
        head_module: the head's name, for architectures not discovered automatically.
        Everything else goes to `transformers.Trainer`.
    """

    def __init__(
        self,
        *args: Any,
        collapse_lambda: float = 0.1,
        gc_lambda: float = 0.0,
        gc_projections: int = 1,
        num_classes: int | None = None,
        head_module: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        smoothing = self.args.label_smoothing_factor
        if self.compute_loss_func is None:
            self.compute_loss_func = CollapseLossFunc(self.model, collapse_lambda, num_classes, head_module, smoothing)
        func = self.compute_loss_func
        if smoothing and not (isinstance(func, CollapseLossFunc) and func.loss.label_smoothing == smoothing):
            raise ValueError(
                f"TrainingArguments(label_smoothing_factor={smoothing}) would not be applied: the Trainer never "
                "smooths the labels of a compute_loss_func, and the one given does not smooth by that factor. Smooth "
                "them in your compute_loss_func and set label_smoothing_factor=0, pass "
                f"CollapseLossFunc(..., label_smoothing={smoothing}), or leave compute_loss_func out"
            )
        # What captures z for the GC term and logs the loss's parts: the CollapseLossFunc in use, or, next to a loss
        # function of the user's, a λ = 0 one that only captures z and logs the GC.
        self._collapse_func: CollapseLossFunc | None = (
            func
            if isinstance(func, CollapseLossFunc)
            else CollapseLossFunc(self.model, 0.0, num_classes, head_module)
            if gc_lambda
            else None
        )
        self.gc_lambda = gc_lambda
        self.gc_projections = gc_projections

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if not (self.gc_lambda and model.training):
            return super().compute_loss(model, inputs, *args, **kwargs)
        name = "pixel_values" if "pixel_values" in inputs else None
        if name is None:
            raise ValueError("gc_lambda needs image inputs (pixel_values); for text, use the GC metric on embeddings")
        x = inputs[name].detach().requires_grad_(True)
        result = super().compute_loss(model, {**inputs, name: x}, *args, **kwargs)
        loss = result[0] if isinstance(result, tuple) else result
        func = self._collapse_func
        gc = gc_from_outputs(func.capture.latest, x, self.gc_projections)
        func.add_to_step((inputs["labels"] != func.loss.ignore_index).sum(), geometric_complexity=gc)
        loss = loss + self.gc_lambda * gc
        return (loss, *result[1:]) if isinstance(result, tuple) else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._collapse_func is not None:
            logs.update(self._collapse_func.pop_parts())
        super().log(logs, *args, **kwargs)
