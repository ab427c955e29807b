"""Probe a model's blocks for neural collapse on downstream data, to pick the SCL-FT block and rank backbones.

Li et al. find that the more a pre-trained model's features collapse on the *downstream training data*
(lower NC1), the better it transfers. That makes NC1 a score that costs one forward pass over the data and no
training, at two levels:

* `probe_layers`: NC1 (and CDNV, NC2) of the pooled output of every block, from ONE forward pass per batch
  with a forward hook on each block, accumulated in one streaming `CollapseMetrics` per block. The report
  recommends the block to fine-tune with SCL-FT (`RECOMMENDATION_RULE`).
* `rank_backbones`: NC1 of the features each backbone's head sees, next to the H-score and LogME of the same
  features (`skipcollapse.transferability`), ranked; `rank_correlation`/`score_correlations` say which score
  tracks the transfer accuracies you measured.

Blocks are pooled as the adapter would pool them (`skipcollapse.layer.pool`): the CLS token after the
model's own final norm for ViT-style encoders, the global average for CNN maps (whose width changes per
stage: one metric per block, so that is fine). Under ``torch.distributed`` each process probes its shard of a
dataset (`skipcollapse.features.shard_loader`) and the statistics are summed across processes, so every
process gets the same report.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ._io import atomic_path, write_atomic
from .adapter.architectures import Architecture, candidates_message, discover
from .collapse.distributed import is_distributed, world
from .collapse.features import HeadInputs, base_model, model_inputs, shard_loader, unwrap
from .adapter.layer import SkipCollapseLayer, SkipSourceLayer, first_tensor, pool
from .collapse.metrics import CollapseMetrics
from .collapse.transferability import h_score, logme

__all__ = [
    "RECOMMENDATION_RULE",
    "LayerReport",
    "LayerRow",
    "probe_layers",
    "rank_backbones",
    "rank_correlation",
    "recommend_layer",
    "score_backbone",
    "score_correlations",
]

Data = Union[Dataset, DataLoader, Iterable]

RECOMMENDATION_RULE = (
    "the block with the lowest NC1 on the downstream training data among all blocks but the model's last one "
    "(exact ties go to the later block)"
)
"""Why this rule. Li et al. (arXiv 2212.12206) report that lower NC1 of pre-trained features on the downstream
*training* data goes with higher transfer accuracy, and build SCL-FT to carry the collapse of one fine-tuned
block straight to the head, so that the frozen blocks after it cannot undo it. The block that already
collapses the downstream classes most is the one whose features the skip connection should carry. The last
block is excluded because a skip from it to the head is no skip at all: SCL-FT on the last block is plain
layer fine-tuning, the method's own ablation. (The paper abstracts in the project's seeds state the NC1 -
transfer relation but no per-layer selection procedure; this rule is our reading of it, and it is what
`LayerReport.recommended` applies.)"""

_METRIC_KEYS = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf_distance")


# ------------------------------------------------------------------------------------------------ report
@dataclass
class LayerRow:
    """Collapse of one block's pooled output. ``index`` is the block's position in
    ``discover(model).blocks`` -- the integer `SkipCollapseConfig(source_layer=...)` takes."""

    index: int
    name: str
    width: Optional[int]
    num_examples: int
    nc1: float = math.nan
    cdnv: float = math.nan
    nc2_equinorm: float = math.nan
    nc2_equiangle: float = math.nan
    nc2_etf_distance: float = math.nan
    h_score: Optional[float] = None
    logme: Optional[float] = None


def recommend_layer(rows: Sequence[LayerRow], last_block: Optional[str] = None) -> Optional[LayerRow]:
    """Apply `RECOMMENDATION_RULE` to probed rows (in block order); None when no row has a finite NC1.

    Args:
        last_block: name of the model's last block, which cannot be a skip source; defaults to the last row.
            A model with a single probed block gets that block back (there is nothing else to choose).
    """
    last = rows[-1].name if last_block is None and rows else last_block
    candidates = [r for r in rows if r.name != last] or list(rows)
    candidates = [r for r in candidates if math.isfinite(r.nc1)]
    if not candidates:
        return None
    best = min(r.nc1 for r in candidates)
    return max((r for r in candidates if r.nc1 == best), key=lambda r: r.index)


@dataclass
class LayerReport:
    """What `probe_layers` measured: one `LayerRow` per block, in the model's order, and the recommendation.

    ``str(report)`` is a table; ``to_rows``/``to_csv``/``to_json``/``plot`` export it.
    """

    layers: list[LayerRow]
    num_classes: int
    pooling: str
    skip_norm: str = ""
    last_block: Optional[str] = None
    rule: str = RECOMMENDATION_RULE
    notes: list[str] = field(default_factory=list)

    @property
    def recommended(self) -> Optional[LayerRow]:
        """The block to fine-tune with SCL-FT (see `RECOMMENDATION_RULE`); its ``name`` and ``index`` are both
        valid ``SkipCollapseConfig(source_layer=...)`` values for models whose blocks `discover` finds."""
        return recommend_layer(self.layers, self.last_block)

    def __getitem__(self, name: str) -> LayerRow:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no probed block named {name!r}; probed: {[r.name for r in self.layers]}")

    def __len__(self) -> int:
        return len(self.layers)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per block (the `LayerRow` fields plus ``recommended``), ready for csv/pandas."""
        chosen = self.recommended
        return [{**asdict(row), "recommended": chosen is not None and row.name == chosen.name} for row in self.layers]

    def to_csv(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        rows = self.to_rows()
        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(LayerRow)] + ["recommended"])
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        return path

    def to_json(self, path: Union[str, Path]) -> Path:
        """Strict JSON: non-finite numbers (a block that did not run, coinciding means) are written as null."""
        path = Path(path)
        chosen = self.recommended
        payload = {
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "skip_norm": self.skip_norm,
            "rule": self.rule,
            "recommended": None if chosen is None else {"name": chosen.name, "index": chosen.index},
            "notes": self.notes,
            "layers": [{k: _json_number(v) for k, v in row.items()} for row in self.to_rows()],
        }
        return write_atomic(path, json.dumps(payload, indent=2) + "\n")

    def plot(self, path: Union[str, Path], title: Optional[str] = None) -> Path:
        """NC1 and CDNV per block on a log scale, the recommended block marked; written with the Agg canvas
        (no pyplot, so the caller's matplotlib backend is left alone)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        fig = Figure(figsize=(max(6.0, 0.35 * len(self.layers) + 3), 4.0), layout="tight")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        index = [r.index for r in self.layers]
        ax.plot(index, [_positive(r.nc1) for r in self.layers], marker="o", label="NC1  tr(Σ_W Σ_B⁺)/K")
        ax.plot(index, [_positive(r.cdnv) for r in self.layers], marker="s", alpha=0.6, label="CDNV")
        ax.set_yscale("log")
        chosen = self.recommended
        if chosen is not None and math.isfinite(chosen.nc1) and chosen.nc1 > 0:
            ax.axvline(chosen.index, color="tab:red", linestyle="--", linewidth=1)
            ax.plot([chosen.index], [chosen.nc1], marker="*", markersize=16, color="tab:red", linestyle="none",
                    label=f"recommended: {chosen.name} (#{chosen.index})")
        ax.set_xticks(index)
        ax.set_xlabel("block index")
        ax.set_ylabel("collapse on downstream data (lower: more collapsed)")
        ax.set_title(title or f"Neural collapse per block ({self.pooling} pooling)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        return path

    def save(self, directory: Union[str, Path], title: Optional[str] = None) -> list[Path]:
        """Write probe.csv, probe.json and probe.png into `directory`; returns their paths.

        The three are written to temporary files first and renamed together at the end, so an interrupted save
        leaves the previous set (or none), never a new CSV beside an empty JSON and an old PNG.
        """
        directory = Path(directory)
        names = ("probe.csv", "probe.json", "probe.png")
        with atomic_path(directory / names[0]) as csv_tmp, atomic_path(directory / names[1]) as json_tmp, \
                atomic_path(directory / names[2]) as png_tmp:
            self.to_csv(csv_tmp)
            self.to_json(json_tmp)
            self.plot(png_tmp, title=title)
        return [directory / name for name in names]

    def __str__(self) -> str:
        with_scores = any(r.h_score is not None or r.logme is not None for r in self.layers)
        header = ["", "idx", "block", "width", "n", "nc1", "cdnv", "nc2_etf"] + (["h_score", "logme"] if with_scores else [])
        chosen = self.recommended
        body = []
        for r in self.layers:
            cells = ["*" if chosen is not None and r.name == chosen.name else "", str(r.index), r.name,
                     "-" if r.width is None else str(r.width), str(r.num_examples),
                     _fmt(r.nc1), _fmt(r.cdnv), _fmt(r.nc2_etf_distance)]
            if with_scores:
                cells += [_fmt(r.h_score), _fmt(r.logme)]
            body.append(cells)
        lines = _table(header, body)
        if chosen is None:
            lines.append("no block has a finite NC1: nothing to recommend")
        else:
            lines.append(f"* recommended SCL-FT source block: {chosen.name} (index {chosen.index}) -- {self.rule}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _positive(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else math.nan


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    numeric = {i for i, h in enumerate(header) if h not in ("", "block", "name")}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in body)]


# ------------------------------------------------------------------------------------------------ data
def _is_dataset(data: Any) -> bool:
    """Map-style data we can index and shard ourselves (torch or HF `datasets`), as opposed to a loader."""
    return not isinstance(data, DataLoader) and hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _make_loader(
    data: Data, batch_size: int, collate_fn: Optional[Callable], max_examples: Optional[int], seed: int
) -> tuple[Iterable, Optional[int]]:
    """(batches of this process, a local cap on examples or None).

    A dataset is subsampled *globally* first (a seeded random subset of ``max_examples``: datasets are often
    sorted by class, and the first N would miss classes), then sharded over the processes. A loader is
    used as given -- sharding it is the caller's business -- and capped at ``max_examples`` per process.
    """
    if not _is_dataset(data):
        return data, max_examples
    if max_examples is not None and max_examples < len(data):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(data), generator=generator)[:max_examples].sort().values.tolist()
        data = Subset(data, keep)
    rank, world_size = world()
    return shard_loader(data, batch_size, collate_fn, rank, world_size), None


def _split_batch(batch: Any, device: torch.device) -> tuple[Any, torch.Tensor]:
    """(model inputs on `device`, labels) of a ``{..., "labels"}`` dict or an ``(inputs, labels)`` pair."""
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise ValueError(f"batches must carry 'labels'; got keys {sorted(batch)}")
        return model_inputs(dict(batch), device), torch.as_tensor(batch["labels"])
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0].to(device), torch.as_tensor(batch[1])
    raise TypeError(f"batches must be dicts with 'labels' or (inputs, labels) pairs, got {type(batch).__name__}")


def _truncate(inputs: Any, labels: torch.Tensor, keep: int) -> tuple[Any, torch.Tensor]:
    def cut(value: Any) -> Any:
        return value[:keep] if isinstance(value, torch.Tensor) and value.dim() > 0 else value

    inputs = {k: cut(v) for k, v in inputs.items()} if isinstance(inputs, dict) else cut(inputs)
    return inputs, labels[:keep]


def _batches(
    model: nn.Module, data: Data, batch_size: int, collate_fn: Optional[Callable], max_examples: Optional[int],
    seed: int, progress: bool, desc: str,
) -> Iterable[tuple[Any, torch.Tensor]]:
    """Yield (inputs, labels) after running ``model`` on them once, in eval mode under no_grad.

    The caller reads whatever its hooks captured during that forward. Train mode is restored at the end.
    """
    loader, cap = _make_loader(data, batch_size, collate_fn, max_examples, seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    rank, _ = world()
    total = len(loader) if hasattr(loader, "__len__") else None
    seen = 0
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=desc, total=total, disable=not progress or rank != 0, leave=False):
            inputs, labels = _split_batch(batch, device)
            if cap is not None:
                if seen >= cap:
                    break
                if seen + len(labels) > cap:
                    inputs, labels = _truncate(inputs, labels, cap - seen)
            seen += len(labels)
            with torch.no_grad():
                if isinstance(inputs, dict):
                    model(**inputs)
                else:
                    model(inputs)
            yield inputs, labels.to(device)
    finally:
        model.train(was_training)


def _gather(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All processes' kept features and labels (the scores are not additive, unlike the NC statistics)."""
    if not is_distributed():
        return features, labels
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (features.cpu(), labels.cpu()))
    parts = [p for p in parts if len(p[1])] or parts[:1]  # ranks without data hold a placeholder width
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _transfer_scores(features: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[float, float]:
    z = torch.cat(features) if features else torch.zeros(0, 1)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    z, y = _gather(z, y)
    if len(y) == 0 or len(torch.unique(y)) < 2:
        return math.nan, math.nan
    return h_score(z, y), logme(z, y)


def _metric_values(metric: CollapseMetrics) -> tuple[dict[str, float], Optional[int], int]:
    """(metrics, width, examples) over all processes (collective: every rank calls it for every metric)."""
    synced = metric.sync()
    try:
        values = synced.compute(sync=False)
    except ValueError:  # no samples, one class, or all class means equal: report NaN rather than fail the probe
        values = {}
    return {k: values.get(k, math.nan) for k in _METRIC_KEYS}, synced.num_features, synced.num_samples


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
    collate_fn: Optional[Callable] = None,
    layers: Optional[Sequence[str]] = None,
    max_examples: Optional[int] = None,
    scores: bool = False,
    pooling: Optional[str] = None,
    seed: int = 0,
    progress: bool = True,
) -> LayerReport:
    """NC metrics of every block's pooled output on labelled data, from one forward pass per batch.

    Args:
        model: a classifier of a family `discover` knows (or any module, with ``layers`` given), plain, in a
            `PeftModel` (e.g. with a SkipCollapse adapter: the adapted blocks are probed) or DDP-wrapped.
        dataset_or_loader: map-style data of ``{..., "labels"}`` dicts or ``(inputs, labels)`` pairs (batched
            here, sharded over processes under ``torch.distributed``), or an iterable of such batches, used as
            given. Batches are passed to the model as keyword arguments (dicts) or positionally.
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
    arch: Optional[Architecture] = discover(base)
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
            raise ValueError(f"{type(base).__name__} has no module {name!r} ({candidates_message(base, name, blocks)})") from None
    in_blocks = all(name in blocks for name in names)
    if in_blocks:  # probe in forward order, indexed like SkipCollapseConfig(source_layer=<int>)
        names.sort(key=blocks.index)
    index = {name: blocks.index(name) if in_blocks else i for i, name in enumerate(names)}
    use_arch_pooling = pooling is None and arch is not None
    pool_name = pooling or (arch.pooling if arch else "auto")
    norm = base.get_submodule(arch.skip_norm) if use_arch_pooling and arch.skip_norm else None

    captured: dict[str, torch.Tensor] = {}

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            hidden = first_tensor(output)
            pooled = _auto_pool(hidden) if pool_name == "auto" else pool(hidden, pool_name)
            captured[name] = norm(pooled) if norm is not None else pooled

        return hook

    metrics = {name: CollapseMetrics(num_classes) for name in names}
    kept: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {name: ([], []) for name in names}
    handles = [target.register_forward_hook(make_hook(name)) for name in names for target in _hook_targets(modules[name])]
    try:
        for _, labels in _batches(model, dataset_or_loader, batch_size, collate_fn, max_examples, seed, progress, "probe"):
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
    return LayerReport(rows, num_classes, pool_name, arch.skip_norm if norm is not None else "", last_block, notes=notes)


# ---------------------------------------------------------------------------------------- ranking backbones
def score_backbone(
    model: nn.Module,
    data: Data,
    num_classes: int,
    *,
    batch_size: int = 32,
    collate_fn: Optional[Callable] = None,
    max_examples: Optional[int] = None,
    head_module: Optional[str] = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "score",
) -> dict[str, Any]:
    """NC1, CDNV, H-score and LogME of the features ``model``'s classifier head sees, on labelled data.

    The head input is captured with `skipcollapse.features.HeadInputs` (a pre-hook on the head, or the fused
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
    return {"width": width, "num_examples": count, "nc1": values["nc1"], "cdnv": values["cdnv"], "h_score": hs, "logme": lm}


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
    data: Union[Data, Mapping[str, Data], Callable[[str, nn.Module], Data]],
    num_classes: int,
    *,
    batch_size: int = 32,
    collate_fn: Union[Callable, Mapping[str, Callable], None] = None,
    max_examples: Optional[int] = None,
    accuracies: Optional[Mapping[str, float]] = None,
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
    for name, model in backbones.items():
        if isinstance(data, Mapping):
            backbone_data = data[name]
        elif callable(data) and not _is_dataset(data) and not isinstance(data, DataLoader):
            backbone_data = data(name, model)
        else:
            backbone_data = data
        collate = collate_fn[name] if isinstance(collate_fn, Mapping) else collate_fn
        result = score_backbone(
            model, backbone_data, num_classes, batch_size=batch_size, collate_fn=collate,
            max_examples=max_examples, seed=seed, progress=progress, desc=name,
        )
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
    scores: Union[Mapping[str, float], Sequence[float]],
    accuracies: Union[Mapping[str, float], Sequence[float]],
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
        score: rank_correlation(
            {r["name"]: r[score] for r in rows}, accuracies, lower_is_better=not higher
        )
        for score, higher in _SCORES.items()
    }
