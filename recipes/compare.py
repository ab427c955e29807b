"""Compare fine-tuning methods on one backbone, data split and set of seeds, and print the table.

    python recipes/compare.py                          # EfficientNet-Lite0 -> digits, offline, a few minutes
    python recipes/compare.py --seeds 0 1 2 --shots full 10 5 --steps 150 --image-size 64   # the README table

Methods (see skipcollapse.zoo.methods): linear probe, full fine-tuning, LoRA, Layer FT (block l, no skip), SCL-FT,
and SCL-FT with the collapse-aware loss. Every run of a setting sees the same training examples (k per class
for few-shot rows, seeded) and is evaluated on the same held-out split. Reported per method: test accuracy
(mean +- std over seeds), trainable parameters and share, train time per epoch, peak memory of training, and
NC1 of the head-input features on the train and test sets. Writes compare.csv, compare.json, compare.md and
two plots to --output-dir. Under `accelerate launch` every run trains on all processes; rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

from skipcollapse import CollapseTrainer, measure_collapse
from skipcollapse.collapse.features import shard_loader
from skipcollapse.zoo.methods import METHODS, prepare
from skipcollapse.zoo.profiling import peak_memory
from skipcollapse.zoo import load_backbone, load_task

DEFAULT_LR = {"linear-probe": 1e-2, "full-ft": 5e-4, "lora": 2e-3, "layer-ft": 1e-3, "scl-ft": 1e-3,
              "scl-ft+collapse": 1e-3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--shots", nargs="+", default=["full", "10"], help="'full' and/or k examples per class")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run (same for every method)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--source-layer", default=None, help="block l for Layer FT and SCL-FT (default: the middle one)")
    p.add_argument("--collapse-lambda", type=float, default=0.1)
    p.add_argument("--lr", nargs="*", default=[], metavar="METHOD=LR", help=f"override learning rates {DEFAULT_LR}")
    p.add_argument("--output-dir", default="runs/compare")
    return p.parse_args(argv)


def run_one(args: argparse.Namespace, method: str, shots: str, seed: int) -> dict:
    k_shot = None if shots == "full" else int(shots)
    task = load_task(args.dataset, k_shot=k_shot, seed=seed)
    torch.manual_seed(seed)
    backbone = load_backbone(args.model, task.num_labels, image_size=args.image_size)
    train_set, test_set = task.datasets(backbone)
    source = int(args.source_layer) if args.source_layer and args.source_layer.lstrip("-").isdigit() else args.source_layer
    model = prepare(backbone.model, method, source_layer=source)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    collate = default_data_collator if backbone.modality == "image" else DataCollatorWithPadding(backbone.tokenizer)
    training_args = TrainingArguments(
        output_dir=str(Path(args.output_dir) / "tmp"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size, learning_rate=learning_rates(args)[method], lr_scheduler_type="cosine",
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[], seed=seed, disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),  # CPU-only processes train with DDP over gloo
    )
    common = dict(model=model, args=training_args, train_dataset=train_set, data_collator=collate)
    if method == "scl-ft+collapse":
        trainer = CollapseTrainer(**common, collapse_lambda=args.collapse_lambda, num_classes=task.num_labels)
    else:
        trainer = Trainer(**common)
    with peak_memory(training_args.device) as memory:
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    steps_per_epoch = math.ceil(len(train_set) / (args.batch_size * training_args.world_size))

    nc = {}
    for split, dataset in (("train", train_set), ("test", test_set)):
        loader = shard_loader(dataset, 2 * args.batch_size, collate, training_args.process_index, training_args.world_size)
        nc[split] = measure_collapse(model, loader, task.num_labels, nc4=False)
    accuracy = evaluate_accuracy(model, test_set, collate, 2 * args.batch_size, training_args)
    return {
        "method": method, "shots": shots, "seed": seed, "train_examples": len(train_set),
        "test_accuracy": accuracy, "trainable_params": trainable, "trainable_share": trainable / total,
        "seconds_per_epoch": seconds * steps_per_epoch / args.steps, "peak_memory_mib": memory.mib,
        "nc1_train": nc["train"]["nc1"], "nc1_test": nc["test"]["nc1"],
    }


def learning_rates(args: argparse.Namespace) -> dict[str, float]:
    overrides = dict(item.split("=", 1) for item in args.lr)
    unknown = set(overrides) - set(METHODS)
    if unknown:
        raise ValueError(f"--lr names unknown methods {sorted(unknown)}; methods: {list(METHODS)}")
    return {**DEFAULT_LR, **{method: float(value) for method, value in overrides.items()}}


@torch.no_grad()
def evaluate_accuracy(model, dataset, collate, batch_size: int, training_args: TrainingArguments) -> float:
    """Accuracy over the whole test split, counted on every process and summed."""
    from skipcollapse.collapse.features import logits_of, model_inputs

    loader = shard_loader(dataset, batch_size, collate, training_args.process_index, training_args.world_size)
    device = next(model.parameters()).device
    model.eval()
    counts = torch.zeros(2, dtype=torch.long, device=device)
    for batch in loader:
        predictions = logits_of(model(**model_inputs(batch, device))).argmax(-1)
        counts += torch.stack([(predictions == batch["labels"].to(device)).sum(), torch.tensor(len(predictions))])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    return counts[0].item() / counts[1].item()


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (shots, method): means and spreads over seeds."""
    table = []
    for shots in dict.fromkeys(r["shots"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            runs = [r for r in rows if r["shots"] == shots and r["method"] == method]
            if not runs:
                continue
            acc = [100 * r["test_accuracy"] for r in runs]
            table.append({
                "shots": shots, "method": method, "seeds": len(runs),
                "accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "trainable_params": runs[0]["trainable_params"], "trainable_share": runs[0]["trainable_share"],
                "seconds_per_epoch": statistics.mean(r["seconds_per_epoch"] for r in runs),
                "peak_memory_mib": statistics.mean(r["peak_memory_mib"] for r in runs),
                "nc1_train": statistics.mean(r["nc1_train"] for r in runs),
                "nc1_test": statistics.mean(r["nc1_test"] for r in runs),
            })
    return table


def markdown(table: list[dict]) -> str:
    lines = [
        "| shots | method | test acc. % (mean ± std) | trainable params (share) | s / epoch | peak mem. MiB | NC1 train | NC1 test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['shots']} | {r['method']} | {r['accuracy_mean']:.1f} ± {r['accuracy_std']:.1f} | "
            f"{r['trainable_params']:,} ({100 * r['trainable_share']:.1f}%) | {r['seconds_per_epoch']:.2f} | "
            f"{r['peak_memory_mib']:.0f} | {r['nc1_train']:.3g} | {r['nc1_test']:.3g} |"
        )
    return "\n".join(lines)


def plot(table: list[dict], directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, x_key, x_label, log_x in (
        ("accuracy_vs_params.png", "trainable_params", "trainable parameters", True),
        ("nc1_vs_accuracy.png", "nc1_train", "NC1 of the training features (head input)", True),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for shots in dict.fromkeys(r["shots"] for r in table):
            rows = [r for r in table if r["shots"] == shots]
            ax.scatter([r[x_key] for r in rows], [r["accuracy_mean"] for r in rows], label=f"shots={shots}")
            for r in rows:
                ax.annotate(r["method"], (r[x_key], r["accuracy_mean"]), fontsize=7)
        ax.set_xscale("log" if log_x else "linear")
        ax.set_xlabel(x_label)
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / name, dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    rows = []
    # one short unrecorded run first: one-time costs (thread pools, allocator growth) must not land on a method
    run_one(argparse.Namespace(**{**vars(args), "steps": 2}), args.methods[0], args.shots[0], args.seeds[0])
    for shots in args.shots:
        for seed in args.seeds:
            for method in args.methods:
                rows.append(run_one(args, method, shots, seed))
                print(json.dumps(rows[-1]), flush=True)
    table = summarise(rows)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps({"args": vars(args), "runs": rows, "table": table}, indent=2))
        (out / "compare.csv").write_text(
            "\n".join([",".join(table[0])] + [",".join(str(v) for v in r.values()) for r in table]) + "\n"
        )
        (out / "compare.md").write_text(markdown(table) + "\n")
        plot(table, out)
        print(f"\n{args.model} -> {args.dataset}, image size {args.image_size}, {args.steps} steps, seeds {args.seeds}")
        print(markdown(table))
    return table


if __name__ == "__main__":
    main()
