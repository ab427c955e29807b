"""Rank backbones by the collapse of their head inputs, next to H-score and LogME, and check the ranking
against measured transfer accuracies."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..collapse.features import HeadInputs
from ..collapse.metrics import CollapseMetrics
from .data import _batches, _is_dataset, _metric_values, _transfer_scores

Data = Dataset | DataLoader | Iterable


# ---------------------------------------------------------------------------------------- ranking backbones
def score_backbone(
    model: nn.Module,
    data: Data,
    num_classes: int,
    *,
    batch_size: int = 32,
    collate_fn: Callable | None = None,
    max_examples: int | None = None,
    head_module: str | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "score",
) -> dict[str, Any]:
    """NC1, CDNV, H-score and LogME of the features ``model``'s classifier head sees, on labelled data.

    The head input is captured with `skipcollapse.collapse.features.HeadInputs` (a pre-hook on the head, or the fused
    features of a SkipCollapse adapter): exactly what a linear probe would be trained on. Keeps those features
    on the CPU for the H-score and LogME (N × width × 4 bytes). Collective under ``torch.distributed``.
    """
    metric = CollapseMetrics(num_classes)
    features: list[torch.Tensor] = []
    labels_kept: list[torch.Tensor] = []
    with HeadInputs(model, head_module) as capture:
        for _, labels in _batches(model, data, batch_size, collate_fn, max_examples, seed, progress, desc):
            z = capture.latest.detach().float().flatten(1)
            metric.update(z, labels)
            features.append(z.cpu())
            labels_kept.append(labels.cpu())
    values, width, count = _metric_values(metric)
    hs, lm = _transfer_scores(features, labels_kept)
    return {
        "width": width,
        "num_examples": count,
        "nc1": values["nc1"],
        "cdnv": values["cdnv"],
        "h_score": hs,
        "logme": lm,
    }


# Score name -> True where higher values predict better transfer.
_SCORES = {"nc1": False, "cdnv": False, "h_score": True, "logme": True}


def _competition_ranks(values: Sequence[float], higher_is_better: bool) -> list[int]:
    """1 = best; equal values share a rank ("1224"); NaN ranks last."""

    def key(v: float) -> float:
        if not math.isfinite(v):
            return math.inf
        return -v if higher_is_better else v

    keys = [key(v) for v in values]
    return [1 + sum(other < k for other in keys) for k in keys]


def rank_backbones(
    backbones: Mapping[str, nn.Module],
    data: Data | Mapping[str, Data] | Callable[[str, nn.Module], Data],
    num_classes: int,
    *,
    batch_size: int = 32,
    collate_fn: Callable | Mapping[str, Callable] | None = None,
    max_examples: int | None = None,
    accuracies: Mapping[str, float] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score every backbone's head-input features on the same downstream data and rank them.

    Args:
        backbones: name -> classifier (its head sized for ``num_classes`` or not: only its input is used).
        data: one dataset/loader for all backbones, a mapping name -> data (backbones preprocess differently),
            or a callable ``(name, model) -> data``.
        collate_fn: one collate function, or a mapping name -> collate function.
        accuracies: optional measured transfer accuracies by name; adds ``accuracy`` and ``rank_accuracy``.

    Returns one row per backbone, sorted by NC1 ascending (most collapsed first), with ``nc1``, ``cdnv``,
    ``h_score``, ``logme`` and ``rank_<score>`` (1 = predicted best: lowest NC1/CDNV, highest H-score/LogME),
    so the ranks of the four scores can be read side by side; `score_correlations` compares them with
    measured accuracies.
    """
    rows = []
    score_one = functools.partial(
        score_backbone, batch_size=batch_size, max_examples=max_examples, seed=seed, progress=progress
    )
    for name, model in backbones.items():
        if isinstance(data, Mapping):
            backbone_data = data[name]
        elif callable(data) and not _is_dataset(data) and not isinstance(data, DataLoader):
            backbone_data = data(name, model)
        else:
            backbone_data = data
        collate = collate_fn[name] if isinstance(collate_fn, Mapping) else collate_fn
        result = score_one(model, backbone_data, num_classes, collate_fn=collate, desc=name)
        rows.append({"name": name, **result})
    if accuracies is not None:
        for row in rows:
            row["accuracy"] = float(accuracies.get(row["name"], math.nan))
    scored = {**_SCORES, **({"accuracy": True} if accuracies is not None else {})}
    for score, higher in scored.items():
        for row, rank in zip(rows, _competition_ranks([r[score] for r in rows], higher)):
            row[f"rank_{score}"] = rank
    return sorted(rows, key=lambda r: (r["rank_nc1"], r["name"]))


def rank_correlation(
    scores: Mapping[str, float] | Sequence[float],
    accuracies: Mapping[str, float] | Sequence[float],
    *,
    lower_is_better: bool = False,
) -> float:
    """Kendall's τ_b between a transferability score and measured transfer accuracies.

    Mappings are matched by key (names present in both); sequences by position. With
    ``lower_is_better=True`` (NC1, CDNV) the score is negated first, so +1 always means "the score orders the
    models exactly as their accuracies do" and -1 the reverse. τ_b corrects for ties; NaN when either side is
    constant or fewer than two models remain.
    """
    if isinstance(scores, Mapping) and isinstance(accuracies, Mapping):
        common = [k for k in scores if k in accuracies]
        xs, ys = [float(scores[k]) for k in common], [float(accuracies[k]) for k in common]
    elif isinstance(scores, Mapping) or isinstance(accuracies, Mapping):
        raise TypeError("pass scores and accuracies both as mappings (matched by name) or both as sequences")
    else:
        xs, ys = [float(v) for v in scores], [float(v) for v in accuracies]
        if len(xs) != len(ys):
            raise ValueError(f"got {len(xs)} scores but {len(ys)} accuracies")
    pairs = [(-x if lower_is_better else x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            dx = pairs[i][0] - pairs[j][0]
            dy = pairs[i][1] - pairs[j][1]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else math.nan


def score_correlations(rows: Sequence[Mapping[str, Any]], accuracies: Mapping[str, float]) -> dict[str, float]:
    """Kendall's τ_b of each score of `rank_backbones` rows with measured accuracies (+1: perfect ordering)."""
    return {
        score: rank_correlation({r["name"]: r[score] for r in rows}, accuracies, lower_is_better=not higher)
        for score, higher in _SCORES.items()
    }
