"""Compare fine-tuning methods fairly: every method tuned on a validation split, test read once per chosen setting.

    python recipes/compare.py                    # the demo: the chosen configurations on the file's first test seed
    python recipes/compare.py --experiment recipes/experiments/fashion_mnist-efficientnet_lite0.json \
        --search --seeds 0 1 2 3 4 --output-dir docs/results/fashion_mnist-efficientnet_lite0   # a README table

Methods (`harness/methods.py`): linear probe, full fine-tuning, LoRA, Layer FT (block l, no skip), SCL-FT,
and SCL-FT with the collapse-aware loss. The experiment file (--experiment) holds the setting every run shares
(backbone, data, image size, step budget), each method's search space (for Layer FT and SCL-FT the source block is
one of its axes) and the search seed; `--search` tunes every method on the validation split on that seed (see
`harness/experiments.py` for the protocol), and writes the
choices back into that file, so later runs without `--search` reuse them. Runs are cached per configuration under
--cache-dir: an interrupted search resumes, and a rerun trains nothing twice.

Writes compare.json (every run, the table, the paired comparison, the choices), compare.csv, compare.md and two
plots to --output-dir. Under `accelerate launch` every run trains on all processes; rank 0 writes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

from tqdm.auto import tqdm

from harness.experiments import (
    Experiment,
    ResultCache,
    cached_run,
    final_specs,
    paired,
    search,
    summarise,
)
from harness.methods import METHODS
from skipcollapse._io import atomic_path, check_writable_folder, write_atomic
from skipcollapse.collapse.distributed import is_main_process
from skipcollapse.zoo import HelpFormatter
from skipcollapse.zoo.names import main_with_clean_errors

RECIPES = Path(__file__).resolve().parent
DEFAULT_EXPERIMENT = RECIPES / "experiments" / "efficientnet_lite0-digits.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--experiment", default=str(DEFAULT_EXPERIMENT), help="experiment file (setting, search space, choices)"
    )
    p.add_argument("--search", action="store_true", help="tune every method on validation first (cached, resumable)")
    p.add_argument(
        "--methods", nargs="+", default=None, choices=METHODS, help="methods to run (default: the file's methods)"
    )
    p.add_argument(
        "--shots", nargs="+", default=None, help="'full' and/or k examples per class (default: the file's shots)"
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds of the test runs (k-shot draw and init); default: the experiment file's first test seed",
    )
    p.add_argument("--output-dir", default="runs/compare", help="where the table, CSV/JSON and plots go")
    p.add_argument("--cache-dir", default="runs/compare-cache", help="finished runs, one JSON file per configuration")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process: results are reproducible at a fixed count (the table used 1); "
        "float sums in another order change training runs",
    )
    args = p.parse_args(argv)
    for folder, option in ((args.output_dir, "--output-dir"), (args.cache_dir, "--cache-dir")):
        try:
            check_writable_folder(folder, option)  # before any training, not after it
        except ValueError as error:
            p.error(str(error))
    for shots in args.shots or []:
        if shots != "full" and not (shots.isdigit() and int(shots) > 0):
            p.error(f"--shots takes 'full' or a positive number of examples per class, got {shots!r}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        experiment = Experiment.load(args.experiment)
    except (FileNotFoundError, ValueError) as bad:  # a missing or malformed file: the message names the fix
        raise SystemExit(f"error: {bad}") from None
    import torch

    torch.set_num_threads(args.threads)
    args.seeds = args.seeds or experiment.seeds[:1]
    args.methods = args.methods or list(experiment.search_space)
    args.shots = args.shots or experiment.shots
    missing = [m for m in args.methods if m not in experiment.search_space]
    if missing:
        raise SystemExit(
            f"{args.experiment} has no search space for {missing}; it covers {list(experiment.search_space)}"
        )
    cache = ResultCache(args.cache_dir)
    setting = experiment.setting
    if args.search:
        with tqdm(desc="search", unit="run") as bar:

            def step(message: str) -> None:
                bar.set_description(message)
                bar.update()

            search(experiment, cache, args.shots, args.methods, progress=step)

    try:
        specs = [
            (label, spec)
            for shots in args.shots
            for method in args.methods
            for label, spec in final_specs(experiment, shots, method, args.seeds)
        ]
    except KeyError as missing:  # no choice yet, or one made for another setting: the message says what to run
        raise SystemExit(f"error: {missing.args[0]}") from None
    rows = []
    for label, spec in tqdm(specs, desc="test runs", unit="run"):
        rows.append({**cached_run(setting, spec, cache), "label": label})
    table = summarise(rows)
    for row in table:  # the search effort behind each row: configurations tried on validation
        row["configurations"] = experiment.chosen[row["shots"]][row["method"].split(" ")[0]]["configurations"]
    comparison = paired(rows)
    report = {
        "experiment": experiment.to_json(),
        "seeds": args.seeds,
        "runs": rows,
        "table": table,
        "paired": comparison,
    }
    if is_main_process():
        out = Path(args.output_dir)
        write_atomic(out / "compare.json", json.dumps(report, indent=2) + "\n")
        write_atomic(out / "compare.csv", _csv(table))
        write_atomic(out / "compare.md", markdown(table) + "\n\n" + paired_markdown(comparison) + "\n")
        title = f"{setting.model} -> {setting.dataset}, {setting.image_size}px, {setting.steps} steps"
        plots = plot(table, out, title)
        print(summary(args, experiment, table, comparison, [out / "compare.md", out / "compare.json", *plots]))
    return report


def _csv(table: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def markdown(table: list[dict]) -> str:
    lines = [
        "| shots | method | test acc. % | lr | source block | trainable params (share) | configs searched | NC1 train "
        "| NC1 test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lr = f"{r['learning_rate']:g}" + (f", λ={r['collapse_lambda']:g}" if r["collapse_lambda"] else "")
        lr += f", wd={r['weight_decay']:g}" if r.get("weight_decay") else ""
        block = (r["source_layer"] or "–").replace("timm_model.", "")
        lines.append(
            f"| {r['shots']} | {r['method']} | {_pm(r['accuracy_mean'], r['accuracy_std'])} | {lr} | {block} | "
            f"{r['trainable_params']:,} ({100 * r['trainable_share']:.1f}%) | {r.get('configurations', '–')} | "
            f"{r['nc1_train']:.3g} | {r['nc1_test']:.3g} |"
        )
    return "\n".join(lines)


def paired_markdown(comparison: list[dict]) -> str:
    lines = [
        "| shots | SCL-FT minus | mean diff. (pts) | seeds won | their params / SCL-FT's |",
        "|---|---|---|---|---|",
    ]
    for c in comparison:
        lines.append(
            f"| {c['shots']} | {c['other']} | {_pm(c['mean_difference'], c['std_difference'])} | "
            f"{c['wins']}/{c['seeds']} | {c['param_ratio']:.2g}× |"
        )
    return "\n".join(lines)


def summary(
    args: argparse.Namespace, experiment: Experiment, table: list[dict], comparison: list[dict], files: list[Path]
) -> str:
    s = experiment.setting
    lines = [
        "",
        f"{s.model} -> {s.dataset}: {s.image_size}px, {s.steps} steps of batch {s.batch_size}, "
        f"validation {s.validation_per_class}/class, seeds {args.seeds}, shots {args.shots}",
        f"hyper-parameters and blocks: chosen on validation ({args.experiment})",
        "",
        markdown(table),
        "",
    ]
    for c in comparison:
        sign = "+" if c["mean_difference"] >= 0 else "−"
        spread = "" if math.isnan(c["std_difference"]) else f" ± {c['std_difference']:.1f}"
        fewer = c["param_ratio"]
        params = (
            "as many" if fewer == 1 else f"{fewer:.1f}× fewer" if fewer > 1 else f"{1 / fewer:.1f}× more"
        ) + " trainable"
        lines.append(
            f"SCL-FT vs {c['other']} ({c['shots']}): {sign}{abs(c['mean_difference']):.1f}{spread} pts "
            f"over {c['seeds']} seed(s), wins {c['wins']}/{c['seeds']}; SCL-FT has {params} parameters"
        )
    lines += ["", "files: " + ", ".join(str(f) for f in files)]
    return "\n".join(lines)


def plot(table: list[dict], directory: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in table))
    markers = dict(zip(methods, "osD^vP*Xh"))
    shots_list = list(dict.fromkeys(r["shots"] for r in table))
    colours = dict(zip(shots_list, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    written = []
    for name, key, label in (
        ("accuracy_vs_params.png", "trainable_params", "trainable parameters (log)"),
        ("nc1_vs_accuracy.png", "nc1_train", "NC1 of the training features at the head input (log)"),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for r in table:
            ax.errorbar(
                r[key],
                r["accuracy_mean"],
                yerr=0 if math.isnan(r["accuracy_std"]) else r["accuracy_std"],
                marker=markers[r["method"]],
                color=colours[r["shots"]],
                linestyle="none",
                markersize=7,
                capsize=3,
            )
        handles = [plt.Line2D([], [], marker=markers[m], color="grey", linestyle="none", label=m) for m in methods]
        handles += [
            plt.Line2D([], [], marker="s", color=colours[s], linestyle="none", label=f"shots: {s}") for s in shots_list
        ]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy % (mean ± std over seeds)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = directory / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    sys.exit(main_with_clean_errors(main))
