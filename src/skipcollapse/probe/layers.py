"""`probe_layers`: NC metrics of every block's pooled output from one forward pass per batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..adapter.architectures import Architecture, candidates_message, discover, norm_width
from ..adapter.layer import SkipCollapseLayer, SkipSourceLayer, first_tensor, pool
from ..adapter.measure import classified_pooling
from ..collapse.features import base_model
from ..collapse.metrics import CollapseMetrics
from .data import _batches, _metric_values, _transfer_scores
from .report import LayerReport, LayerRow

Data = Dataset | DataLoader | Iterable


# ------------------------------------------------------------------------------------------------ probe
def _hook_targets(module: nn.Module) -> list[nn.Module]:
    """The modules whose output is the block's own output. Under a SkipCollapse adapter the block is wrapped: its
    inner block (the frozen original or the adapter's trainable copy, whichever runs) is hooked, so a block that a
    ``replace`` adapter bypasses reports that it did not run."""
    if isinstance(module, SkipSourceLayer):
        return [module.base_layer, *module.skipcollapse_block.values()]
    if isinstance(module, SkipCollapseLayer):
        return [module.get_base_layer()]
    return [module]


def _auto_pool(hidden: torch.Tensor) -> torch.Tensor:
    """Pooling for models `discover` does not know: average maps [B, C, ...], mean tokens [B, T, D]."""
    if hidden.dim() > 3:
        return pool(hidden, "avg")
    if hidden.dim() == 3:
        return pool(hidden, "mean")
    return hidden.flatten(1)


def probe_layers(
    model: nn.Module,
    dataset_or_loader: Data,
    num_classes: int,
    *,
    batch_size: int = 32,
    collate_fn: Callable | None = None,
    layers: Sequence[str] | None = None,
    max_examples: int | None = None,
    scores: bool = False,
    pooling: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> LayerReport:
    """NC metrics of every block's pooled output on labelled data, from one forward pass per batch.

    Args:
        model: a classifier of a family `discover` knows (or any module, with ``layers`` given), plain, in a
            `PeftModel` (e.g. with a SkipCollapse adapter: the adapted blocks are probed) or DDP-wrapped.
        dataset_or_loader: map-style data of ``{..., "labels"}`` (or ``"label"``) dicts or ``(inputs, labels)``
            pairs (batched here, sharded over processes under ``torch.distributed``), or an iterable of such
            batches, used as given. Batches are passed to the model as keyword arguments (dicts) or positionally
            (`skipcollapse._torch_utils.split_batch`).
        num_classes: K; labels lie in [0, K).
        batch_size, collate_fn: how a dataset is batched (``collate_fn`` as for a `DataLoader`).
        layers: module names to probe instead of the discovered blocks (names of the base model).
        max_examples: probe a seeded random subset of this many examples of a dataset (globally), or at most
            this many examples per process of a loader.
        scores: also compute the H-score and LogME of every block. They are not streaming statistics: the pooled
            features of every probed block are kept on the CPU (N × Σ_blocks width × 4 bytes, e.g. ~9 MB for
            EfficientNet-Lite0's 16 blocks on 1,257 images) and gathered to every process. Bound N with
            ``max_examples`` on large data.
        pooling: override the architecture's pooling (``cls``/``avg``/``mean``/``flatten``); the final norm
            (`Architecture.skip_norm`) is applied only with the architecture's own pooling.
        seed: of the ``max_examples`` subset.
        progress: show a tqdm bar (on rank 0).

    Blocks that did not run (the blocks after the source block under ``replace`` fusion) get NaN metrics and
    ``num_examples == 0``. Collective under ``torch.distributed``: every process must call it.
    """
    base = base_model(model)
    arch: Architecture | None = discover(base)
    blocks = list(arch.blocks) if arch else []
    names = list(layers) if layers is not None else list(blocks)
    if not names:
        raise ValueError(
            f"cannot find the blocks of {type(base).__name__}; pass layers=[<module names>] "
            f"({candidates_message(base, 'layer', [])})"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"layers must be distinct, got {names}")
    modules = {}
    for name in names:
        try:
            modules[name] = base.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"{type(base).__name__} has no module {name!r} ({candidates_message(base, name, blocks)})"
            ) from None
    in_blocks = all(name in blocks for name in names)
    if in_blocks:  # probe in forward order, indexed like SkipCollapseConfig(source_layer=<int>)
        names.sort(key=blocks.index)
    index = {name: blocks.index(name) if in_blocks else i for i, name in enumerate(names)}
    use_arch_pooling = pooling is None and arch is not None
    pool_name = pooling or (classified_pooling(base) if arch else "auto")
    norm_name = arch.final_norm if use_arch_pooling else ""
    norm = base.get_submodule(norm_name) if norm_name else None
    width = norm_width(norm) if norm is not None else None

    captured: dict[str, torch.Tensor] = {}

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            hidden = first_tensor(output)
            pooled = _auto_pool(hidden) if pool_name == "auto" or hidden.dim() != 3 else pool(hidden, pool_name)
            if pooled.dim() == 3:  # a head that runs per token: probe the last token, the one decoders classify
                pooled = pooled[:, -1]
            captured[name] = norm(pooled) if norm is not None and pooled.shape[-1] == width else pooled

        return hook

    metrics = {name: CollapseMetrics(num_classes) for name in names}
    kept: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {name: ([], []) for name in names}
    handles = [
        target.register_forward_hook(make_hook(name)) for name in names for target in _hook_targets(modules[name])
    ]
    try:
        for _, labels in _batches(
            model, dataset_or_loader, batch_size, collate_fn, max_examples, seed, progress, "probe"
        ):
            for name, features in captured.items():
                features = features.detach().float()
                metrics[name].update(features, labels)
                if scores:
                    kept[name][0].append(features.cpu())
                    kept[name][1].append(labels.cpu())
            captured.clear()
    finally:
        for handle in handles:
            handle.remove()
        captured.clear()

    rows = []
    for name in names:
        values, width, count = _metric_values(metrics[name])
        row = LayerRow(index=index[name], name=name, width=width, num_examples=count, **values)
        if scores:
            row.h_score, row.logme = _transfer_scores(*kept[name])
            kept[name] = ([], [])
        rows.append(row)
    notes = [f"{r.name} did not run on this data" for r in rows if r.num_examples == 0]
    last_block = blocks[-1] if blocks and in_blocks else None
    return LayerReport(rows, num_classes, pool_name, norm_name, last_block, notes=notes)
