"""The README's results summary, from the comparison outputs: the papers' claims per task and budget, judged against
the noise of the comparison itself.

    python recipes/report.py                      # reads docs/results/*/compare.json, writes docs/results/summary.md

Each `recipes/compare.py` output folder holds every test run (method, seed, test accuracy, trainable parameters).
Differences are paired by seed (the same test split, the same k-shot draw). With d the per-seed differences and
se = std(d) / sqrt(n), a claim that a difference is at least a bound b (b = -1 point for "within a point", 0 for
"ahead") reads:

* holds: mean(d) - 2 se >= b (the whole interval clears the bound; for "ahead", b = 0 must be cleared strictly);
* does not hold: mean(d) + 2 se < b (the whole interval misses it);
* within noise: otherwise; "not run" with fewer than two seeds.

At 5 seeds, mean ± 2 se is about a 90% interval (Student's t with 4 degrees of freedom).

Claims: (a) SCL-FT within a point of tuned full fine-tuning with at most 10% of its trainable parameters (full data);
(b) SCL-FT ahead of the best other method in few-shot; (c) the NC1-chosen block as good as the validation-chosen
one, within a point (identical when validation chose the NC1 block).

Reruns measure float-order noise: a folder `<reference>-2_threads` reruns the reference's chosen configurations and
seeds under two torch threads, `<reference>-cpu_rerun` under one thread on whatever CPU ran it (from an empty cache;
every cached result records its CPU), so `<x>-cpu_rerun-2_threads` against `<x>-cpu_rerun` is the thread count alone.
The spread between a rerun and its reference is what float order does to one run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from harness.experiments import seed_differences as paired
from skipcollapse._io import write_atomic

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
RERUNS = ("-2_threads", "-cpu_rerun")  # folder suffixes: a rerun of the folder named without it


def _runs(folder: Path) -> tuple[dict, list[dict]]:
    report = json.loads((folder / "compare.json").read_text())
    return report["experiment"], report["runs"]


def verdict(diffs: list[float], bound: float, strict: bool = False) -> tuple[str, str]:
    """(verdict, 'mean ± 2se over n seeds') of the claim mean difference >= bound (> bound when `strict`)."""
    if len(diffs) < 2:
        return "not run", "–"
    mean, se = statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    text = f"{mean:+.1f} ± {2 * se:.1f} (n={len(diffs)})"
    low = mean - 2 * se
    if low > bound or (low == bound and not strict):
        return "holds", text
    if mean + 2 * se < bound:
        return "does not hold", text
    return "within noise", text


def _mean_accuracy(runs: list[dict], shots: str, label: str) -> float:
    return statistics.mean(100 * r["test_accuracy"] for r in runs if r["shots"] == shots and r["label"] == label)


def claims(experiment: dict, runs: list[dict]) -> list[dict]:
    setting = experiment["setting"]
    where = f"{setting['model']} → {setting['dataset']}, {setting['steps']} steps"
    rows = []
    for shots in experiment["shots"]:
        present = {r["label"] for r in runs if r["shots"] == shots}
        if "scl-ft" not in present:
            continue
        scl = next(r for r in runs if r["shots"] == shots and r["label"] == "scl-ft")
        if shots == "full" and "full-ft" in present:
            full = next(r for r in runs if r["shots"] == shots and r["label"] == "full-ft")
            share = scl["trainable_params"] / full["trainable_params"]
            state, text = verdict(paired(runs, shots, "scl-ft", "full-ft"), -1.0)
            if share > 0.10:  # the accuracy part may hold; the claim is both
                text = f"accuracy part {state}: {text}"
                state = "does not hold"
            rows.append(
                dict(
                    where=where,
                    shots=shots,
                    claim="(a) within 1 pt of full FT, ≤10% params",
                    verdict=state,
                    evidence=f"{text}; {100 * share:.1f}% of full FT's trainable parameters",
                )
            )
        if shots != "full":
            others = [label for label in present if not label.startswith("scl-ft")]
            best = max(others, key=lambda label: _mean_accuracy(runs, shots, label)) if others else None
            state, text = verdict(paired(runs, shots, "scl-ft", best), 0.0, strict=True) if best else ("not run", "–")
            rows.append(
                dict(
                    where=where,
                    shots=shots,
                    claim=f"(b) ahead of the best other method ({best})",
                    verdict=state,
                    evidence=text,
                )
            )
        chosen = experiment["chosen"][shots]["scl-ft"]
        if "scl-ft (NC1 block)" in present:
            state, text = verdict(paired(runs, shots, "scl-ft (NC1 block)", "scl-ft"), -1.0)
            evidence = f"NC1 block minus validation block: {text}"
        elif chosen["source_layer"] == chosen["nc1_source_layer"]:
            state, evidence = "holds", "validation chose the NC1 block"
        else:
            state, evidence = "not run", "the NC1 block's row is missing"
        if len({g["source_layer"] for g in chosen["grid"]}) < 2:
            state, evidence = "not run", "the search tried the NC1 block only"
        evidence += f" (NC1: {_short(chosen['nc1_source_layer'])}, validation: {_short(chosen['source_layer'])})"
        rows.append(
            dict(
                where=where,
                shots=shots,
                claim="(c) NC1 block as good as the validation block",
                verdict=state,
                evidence=evidence,
            )
        )
    return rows


def _short(block: str | None) -> str:
    return (block or "–").replace("timm_model.", "").replace("bert.encoder.", "")


def rerun_spread(folder: Path, reference: Path) -> list[dict]:
    """Per method: the same configuration and seed in `folder` and in the run it reruns, |difference| in points."""
    if not (reference / "compare.json").exists():
        raise SystemExit(f"{folder} is a rerun of {reference}, which has no compare.json: run it first")
    _, two = _runs(folder)
    _, one = _runs(reference)
    single = {(r["label"], r["shots"], r["seed"]): r["test_accuracy"] for r in one}
    out: dict[str, list[float]] = {}
    for r in two:
        key = (r["label"], r["shots"], r["seed"])
        if key in single:
            out.setdefault(r["label"], []).append(abs(100 * (r["test_accuracy"] - single[key])))
    return [{"method": m, "seeds": len(d), "mean_abs": statistics.mean(d), "max_abs": max(d)} for m, d in out.items()]


def run_time(cached: list[dict], experiment: dict) -> dict:
    """Per thread count: the cached results made under `experiment`'s setting (search and test, and any grid point
    a search once tried), how many of them recorded their seconds (runs cached before results carried them did
    not), and those runs' summed wall time in minutes: what training the table cost."""
    out: dict[int, dict] = {}
    for result in cached:
        if result.get("setting") == experiment["setting"]:
            entry = out.setdefault(result["threads"], {"runs": 0, "timed": 0, "minutes": 0.0})
            entry["runs"] += 1
            if "seconds" in result:
                entry["timed"] += 1
                entry["minutes"] += result["seconds"] / 60
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(RESULTS), help="folder of compare.py output folders")
    p.add_argument("--cache-dir", default=None, help="the runs' cache, for the time table (default: <results>/cache)")
    args = p.parse_args(argv)
    root = Path(args.results)
    if not root.is_dir():
        p.error(f"no results folder {str(root)!r}: pass --results, or make the tables first (make results)")
    cache = Path(args.cache_dir) if args.cache_dir else root / "cache"
    cached = [json.loads(path.read_text()) for path in cache.glob("*.json")]  # read once, for every experiment
    times = []
    lines = [
        "| task, budget | shots | claim | verdict | paired difference, mean ± 2 se (pts) |",
        "|---|---|---|---|---|",
    ]
    spreads = []
    for folder in sorted(f for f in root.iterdir() if (f / "compare.json").exists()):
        if folder.name.endswith(RERUNS):  # <reference>-2_threads, <reference>-cpu_rerun
            reference = root / folder.name.rsplit("-", 1)[0]
            spreads += [(folder.name, reference.name, s) for s in rerun_spread(folder, reference)]
            continue
        experiment, runs = _runs(folder)
        times += [(folder.name, threads, t) for threads, t in sorted(run_time(cached, experiment).items())]
        for row in claims(experiment, runs):
            lines.append(
                f"| {row['where']} | {row['shots']} | {row['claim']} | **{row['verdict']}** | {row['evidence']} |"
            )
    if spreads:
        lines += [
            "",
            "| rerun | of | method | seeds | mean \\|Δ\\| (pts) | max \\|Δ\\| (pts) |",
            "|---|---|---|---|---|---|",
        ]
        for name, of, s in spreads:
            row = f"| {name} | {of} | {s['method']} | {s['seeds']} | {s['mean_abs']:.2f} | {s['max_abs']:.2f} |"
            lines.append(row)
    if times:
        lines += [
            "",
            "| experiment | threads | runs (search and test) | of them timed | their run time, summed (min) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {threads} | {t['runs']} | {t['timed']} | {t['minutes']:.0f} |" for name, threads, t in times
        ]
    text = "\n".join(lines) + "\n"
    write_atomic(root / "summary.md", text)
    print(text)
    return text


if __name__ == "__main__":
    main()
