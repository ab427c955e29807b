"""The ``skipcollapse`` command line.

``skipcollapse probe`` measures neural collapse of every block of a backbone on the *training* split of a
downstream task (the paper's score: collapse on downstream training data predicts transfer) and names the
block to fine-tune with SCL-FT; with ``--models a,b,c`` it ranks backbones by the collapse of their head
inputs next to H-score and LogME instead::

    skipcollapse probe --model efficientnet_lite0 --dataset digits --output-dir runs/probe
    skipcollapse probe --models efficientnet_lite0,timm:resnet18 --dataset digits --output-dir runs/rank

Models and tasks are resolved by `skipcollapse.zoo` (offline embedded names, ``timm:<name>``, hub ids or local
paths). Under ``accelerate launch``/``torchrun`` each process probes its shard and process 0 writes the files.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._io import check_writable_folder
from .collapse.distributed import world
from .probe import LayerReport, probe_layers, rank_backbones
from .zoo import Backbone, HelpFormatter, Task, add_data_arguments, load_backbone, task_from_args
from .zoo.names import UnknownNameError, missing_recipes_extra, resolve_backbone

RANKING_COLUMNS = (
    "name",
    "width",
    "num_examples",
    "nc1",
    "cdnv",
    "h_score",
    "logme",
    "rank_nc1",
    "rank_cdnv",
    "rank_h_score",
    "rank_logme",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skipcollapse", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    probe = commands.add_parser(
        "probe",
        help="neural collapse per block (or per backbone) on downstream training data",
        description="Measure neural collapse (NC1, CDNV, H-score, LogME) of every block's pooled features on the "
        "training split of a task, in one forward pass per batch, and recommend the block to fine-tune with SCL-FT "
        "(--models a,b,c ranks backbones instead). Writes CSV/JSON/PNG to --output-dir.",
        formatter_class=HelpFormatter,
    )
    add_data_arguments(probe)
    probe.add_argument(
        "--models", default=None, help="comma-separated backbones to rank (instead of probing one model's blocks)"
    )
    probe.add_argument(
        "--max-examples", type=int, default=None, help="probe a seeded random subset of this many examples"
    )
    probe.add_argument("--batch-size", type=int, default=32, help="examples per forward pass")
    probe.add_argument("--layers", default=None, help="comma-separated module names to probe (default: every block)")
    probe.add_argument(
        "--no-scores",
        action="store_true",
        help="skip H-score and LogME per block (they keep the pooled features in memory)",
    )
    probe.add_argument("--no-progress", action="store_true", help="no progress bar")
    probe.add_argument("--output-dir", default="runs/probe", help="where probe.csv/json/png go")
    return parser


def _train_data(task: Task, backbone: Backbone) -> tuple[Any, Any]:
    """The training split, preprocessed for ``backbone``: collapse on the downstream *training* data is the score."""
    return task.datasets(backbone).train, backbone.collator()


def _probe_one(args: argparse.Namespace, task: Task, device: Any, is_main: bool, out: Path) -> LayerReport:
    backbone = load_backbone(args.model, task.num_labels, args.image_size)
    model = backbone.model.to(device)
    train, collate = _train_data(task, backbone)
    report = probe_layers(
        model,
        train,
        task.num_labels,
        batch_size=args.batch_size,
        collate_fn=collate,
        layers=args.layers.split(",") if args.layers else None,
        max_examples=args.max_examples,
        scores=not args.no_scores,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if is_main:
        written = report.save(out, title=f"{args.model} on {args.dataset} (train split)")
        examples = max((r.num_examples for r in report.layers), default=0)
        print(
            f"{args.model} on {args.dataset}: {examples} training examples, {task.num_labels} classes, "
            f"{report.pooling} pooling{' + ' + report.skip_norm if report.skip_norm else ''}, "
            f"{world()[1]} process(es)"
        )
        print(report)
        chosen = report.recommended
        if chosen is not None:
            print(
                f"Recommended SCL-FT source block: {chosen.name} (index {chosen.index}); use "
                f"SkipCollapseConfig(source_layer={chosen.name!r}) or source_layer={chosen.index}"
            )
        print(f"wrote {', '.join(str(path) for path in written)}")
    return report


def _rank(args: argparse.Namespace, task: Task, device: Any, is_main: bool, out: Path) -> list[dict[str, Any]]:
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise SystemExit(f"--models names must be distinct, got {names}")
    models, data, collate = {}, {}, {}
    for name in names:
        backbone = load_backbone(name, task.num_labels, args.image_size)
        models[name] = backbone.model.to(device)
        data[name], collate[name] = _train_data(task, backbone)
    rows = rank_backbones(
        models,
        data,
        task.num_labels,
        batch_size=args.batch_size,
        collate_fn=collate,
        max_examples=args.max_examples,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "ranking.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=RANKING_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        print(f"backbones on {args.dataset} (train split), head-input features; rank 1 = predicted best")
        print(_ranking_table(rows))
        print(f"wrote {out / 'ranking.csv'}")
    return rows


def _ranking_table(rows: list[dict[str, Any]]) -> str:
    header = ["name", "width", "n", "nc1 (rank)", "cdnv (rank)", "h_score (rank)", "logme (rank)"]
    body = [
        [str(r["name"]), str(r["width"]), str(r["num_examples"])]
        + [f"{r[s]:.4g} ({r['rank_' + s]})" for s in ("nc1", "cdnv", "h_score", "logme")]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``skipcollapse`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    for option in ("image_size", "batch_size", "max_examples"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be a positive integer, got {value}")
    try:
        check_writable_folder(args.output_dir)
    except ValueError as error:
        parser.error(str(error))
    missing = missing_recipes_extra()
    if missing:
        print(
            f"error: the probe needs {', '.join(missing)}, from the [recipes] extra: "
            "pip install 'skipcollapse[recipes]'",
            file=sys.stderr,
        )
        return 2
    import torch
    from accelerate import PartialState

    # Initialises torch.distributed when started by accelerate/torchrun. Without a GPU, accelerate only sets up
    # its multi-CPU (gloo) mode when told it runs on the CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    try:
        for name in args.models.split(",") if args.models else [args.model]:
            resolve_backbone(name.strip())  # every name checked before any data or weights load
        task = task_from_args(args)
    except UnknownNameError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    if args.models:
        _rank(args, task, state.device, state.is_main_process, out)
    else:
        _probe_one(args, task, state.device, state.is_main_process, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
