"""Input checks the collapse tools share: labels that index classes, features that are numbers.

A label out of range would index past the per-class statistics (a raw IndexError, or a silently wrong class
on some devices); a float label would be truncated; a NaN feature turns every metric and the penalty into NaN.
Each gets a ValueError that names the problem instead.
"""

from __future__ import annotations

import torch
from torch import Tensor


def short_list(values: list, limit: int = 20) -> str:
    """Values for an error message: all of them, or the first `limit` and the count."""
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}, ...] ({len(values)} in total)" if len(values) > limit else f"[{shown}] ({len(values)} in total)"


def check_labels(labels: Tensor, n: int, num_classes: int | None, ignore_index: int | None = None) -> Tensor:
    """`labels` as int64 after checking: 1-D, integer dtype, n rows, values in [0, num_classes) or ignore_index."""
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a 1-D tensor [N], got {shape}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be class ids with an integer dtype, got {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} rows but features have {n}")
    kept = labels if ignore_index is None else labels[labels != ignore_index]
    bad = (kept < 0) if num_classes is None else (kept < 0) | (kept >= num_classes)
    if bool(bad.any()):
        values = sorted(set(kept[bad].tolist()))
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        extra = f" (or {ignore_index} to ignore a row)" if ignore_index is not None else ""
        raise ValueError(
            f"labels must be integers in {bound}{extra}; got out-of-range values {short_list(values, 10)}"
        )
    return labels.long()


def check_finite(features: Tensor, name: str = "features") -> None:
    bad = int((~torch.isfinite(features.detach())).any(dim=-1).sum()) if features.numel() else 0
    if bad:
        raise ValueError(f"{name} contain NaN or inf in {bad} of {features.shape[0]} rows; the result would be NaN")
