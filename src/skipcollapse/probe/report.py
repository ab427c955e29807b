"""What the layer probe reports: one row per block, the recommended block, and the files it writes."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._io import atomic_path, write_atomic

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

METRIC_KEYS = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf_distance")


# ------------------------------------------------------------------------------------------------ report
@dataclass
class LayerRow:
    """Collapse of one block's pooled output. ``index`` is the block's position in
    ``discover(model).blocks`` -- the integer `SkipCollapseConfig(source_layer=...)` takes."""

    index: int
    name: str
    width: int | None
    num_examples: int
    nc1: float = math.nan
    cdnv: float = math.nan
    nc2_equinorm: float = math.nan
    nc2_equiangle: float = math.nan
    nc2_etf_distance: float = math.nan
    h_score: float | None = None
    logme: float | None = None


def recommend_layer(rows: Sequence[LayerRow], last_block: str | None = None) -> LayerRow | None:
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
    last_block: str | None = None
    rule: str = RECOMMENDATION_RULE
    notes: list[str] = field(default_factory=list)

    @property
    def recommended(self) -> LayerRow | None:
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

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        rows = self.to_rows()
        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(LayerRow)] + ["recommended"])
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        return path

    def to_json(self, path: str | Path) -> Path:
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

    def plot(self, path: str | Path, title: str | None = None) -> Path:
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
            ax.plot(
                [chosen.index],
                [chosen.nc1],
                marker="*",
                markersize=16,
                color="tab:red",
                linestyle="none",
                label=f"recommended: {chosen.name} (#{chosen.index})",
            )
        ax.set_xticks(index)
        ax.set_xlabel("block index")
        ax.set_ylabel("collapse on downstream data (lower: more collapsed)")
        ax.set_title(title or f"Neural collapse per block ({self.pooling} pooling)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        return path

    def save(self, directory: str | Path, title: str | None = None) -> list[Path]:
        """Write probe.csv, probe.json and probe.png into `directory`; returns their paths.

        The three are written to temporary files first and renamed together at the end, so an interrupted save
        leaves the previous set (or none), never a new CSV beside an empty JSON and an old PNG.
        """
        directory = Path(directory)
        names = ("probe.csv", "probe.json", "probe.png")
        with (
            atomic_path(directory / names[0]) as csv_tmp,
            atomic_path(directory / names[1]) as json_tmp,
            atomic_path(directory / names[2]) as png_tmp,
        ):
            self.to_csv(csv_tmp)
            self.to_json(json_tmp)
            self.plot(png_tmp, title=title)
        return [directory / name for name in names]

    def __str__(self) -> str:
        with_scores = any(r.h_score is not None or r.logme is not None for r in self.layers)
        header = ["", "idx", "block", "width", "n", "nc1", "cdnv", "nc2_etf"] + (
            ["h_score", "logme"] if with_scores else []
        )
        chosen = self.recommended
        body = []
        for r in self.layers:
            cells = [
                "*" if chosen is not None and r.name == chosen.name else "",
                str(r.index),
                r.name,
                "-" if r.width is None else str(r.width),
                str(r.num_examples),
                _fmt(r.nc1),
                _fmt(r.cdnv),
                _fmt(r.nc2_etf_distance),
            ]
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


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    numeric = {i for i, h in enumerate(header) if h not in ("", "block", "name")}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in body)]
