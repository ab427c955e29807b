"""One training epoch of SCL-FT from the prefix cache against full fine-tuning, LoRA and SCL-FT without the cache.

    python benchmarks/bench_epoch.py                          # EfficientNet-Lite0 (ImageNet) on digits, 64 px
    python benchmarks/bench_epoch.py --max-examples 1258 --repeats 3 --image-size 96
    python benchmarks/bench_epoch.py --task rotten-tomatoes   # MiniLM-L6 on movie-review snippets, 48 tokens

`--task` picks the data and with it the backbone:
  digits            EfficientNet-Lite0 (ImageNet weights) on the 8x8 digits, resized to --image-size (the default)
  rotten-tomatoes   MiniLM-L6 (all-MiniLM-L6-v2, BertForSequenceClassification) on Rotten Tomatoes reviews, texts
                    tokenized per batch, truncated and padded to --max-length tokens (the backbone's collator with
                    padding="max_length": the prefix cache needs one length per example, and every method then
                    runs the same number of tokens per step)

Same backbone, data subset, batch size, optimizer (AdamW, lr 1e-3) and seeded batch order for every method:
  full FT          every parameter trains (BatchNorm in train mode)
  LoRA             peft LoRA r=8 on every 1x1 conv / linear inside the blocks, classifier via modules_to_save,
                   frozen BatchNorm kept in eval (recipes/harness/methods.py, as in the comparison recipe)
  SCL-FT           SkipCollapse adapter on the default (middle) block, fusion replace / add, without the cache
  SCL-FT + cache   the same adapter trained by CachedSkipModel from a PrefixCache built first (timed apart); a
                   variant the cache refuses for the backbone (skipcollapse.cache: mean / per_token pooling, add
                   fusion for a model class without a suffix runner) is listed as "refused: <reason>"

Time. One process holds all six trainees and times their epochs round-robin, `--repeats` rounds after
`--warmup-steps` steps each, and reports each method's fastest epoch: the cores are shared with other jobs, and
interleaving exposes every method to the same background load while the minimum is its least disturbed run.
Data loading is included (a cached epoch reads no images). `--threads` defaults to 1: on two cores shared with
other jobs, torch's two intra-op threads spend most of their time waiting at barriers for a descheduled peer (a
full fine-tuning step measured ~4x slower with 2 threads than with 1 here).

Memory. Each method also runs alone in a fresh process (so no allocator state carries over): after loading model
and data it samples the process's anonymous resident memory (RssAnon in /proc/self/status) every millisecond in a
thread while it (builds the cache and) runs `--memory-steps` optimizer steps, and reports the peak minus the level
before. Anonymous memory is the heap: gradients, optimizer state, activations, allocator slack, the cache; it
leaves out file-backed pages such as the shared libraries' code that the first convolution pages in, which would
otherwise swamp the differences. It counts pages the allocator holds, not bytes of live tensors, and a peak shorter
than a millisecond can be missed. On CUDA: torch.cuda.max_memory_allocated above the allocation before.

Ratios are to full fine-tuning. Targets on CPU (digits): cached SCL-FT epoch <= 0.35x full FT and <= 0.7x LoRA;
peak memory <= 0.5x full FT. The cache's build time is reported apart and amortised: (build + E epochs) / E,
E = --amortise-epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The methods' setups and the memory probe are the comparison harness's (recipe code in recipes/harness).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

METHODS = ("full", "lora", "scl-replace", "scl-add", "scl-replace-cache", "scl-add-cache")
TASKS = {  # task -> (backbone, how the table's first line names them)
    "digits": ("efficientnet_lite0", "EfficientNet-Lite0 (ImageNet weights) on digits"),
    "rotten-tomatoes": ("minilm", "MiniLM-L6 (all-MiniLM-L6-v2) on rotten-tomatoes"),
}
LABELS = {
    "full": "full fine-tuning",
    "lora": "LoRA r=8",
    "scl-replace": "SCL-FT replace",
    "scl-add": "SCL-FT add",
    "scl-replace-cache": "SCL-FT replace + cache",
    "scl-add-cache": "SCL-FT add + cache",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=tuple(TASKS), default="digits", help="the data, and with it the backbone")
    p.add_argument("--image-size", type=int, default=64, help="digits: input size in pixels")
    p.add_argument("--max-length", type=int, default=48, help="rotten-tomatoes: tokens per review (truncated, padded)")
    p.add_argument(
        "--max-examples", type=int, default=512, help="seeded training subset (of 1258 digits, 10150 reviews)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per method before the timed epochs")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per method (round-robin); the fastest counts")
    p.add_argument("--memory-steps", type=int, default=3, help="optimizer steps of the memory measurement")
    p.add_argument("--amortise-epochs", type=int, default=3, help="E in the amortised cost (build + E epochs) / E")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--worker", choices=("time", "memory"), help=argparse.SUPPRESS)  # internal
    return p.parse_args(argv)


# ============================================================================================ trainees
@dataclass
class Trainee:
    """One method ready to train: the module to call, its data, optimizer and loader."""

    method: str
    model: Any
    loader: Any
    optimizer: Any
    trainable: int
    build_seconds: float | None = None
    cache_mib: float | None = None


@functools.cache
def _load_task(name: str) -> Any:
    from skipcollapse.zoo import load_task

    return load_task(name)  # once per process: reading and splitting the reviews takes seconds


def _load_data_and_model(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(seeded training subset, fresh model on the device, collate function)."""
    import torch
    from torch.utils.data import Subset

    from skipcollapse.zoo import load_backbone

    task = _load_task(args.task)
    backbone = load_backbone(TASKS[args.task][0], task.num_labels, image_size=args.image_size)
    train_set = task.dataset("train", backbone, max_length=args.max_length)
    collate = backbone.collator()
    if backbone.modality == "text":  # one length for every batch, which the prefix cache needs
        collate = dataclasses.replace(collate, padding="max_length", max_length=args.max_length)
    keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[: args.max_examples]
    return Subset(train_set, sorted(keep.tolist())), backbone.model.to(args.device), collate


def wrap(method: str, model: Any) -> Any:
    """The model each method trains, before any cache: the comparison recipe's setups (harness/methods.py)."""
    from peft import get_peft_model

    from harness.methods import prepare as prepare_method
    from skipcollapse import SkipCollapseConfig

    if method in ("full", "lora"):
        return prepare_method(model, "full-ft" if method == "full" else "lora")
    fusion = "replace" if method.startswith("scl-replace") else "add"
    return get_peft_model(model, SkipCollapseConfig(fusion=fusion))


def prepare(method: str, model: Any, train_set: Any, collate: Any, args: argparse.Namespace) -> Trainee:
    """Build the cache (timed) when the method uses one, then the optimizer and a seeded loader.

    The prefix cache refuses a model it cannot serve with ValueError or NotImplementedError."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from skipcollapse.cache import CachedSkipModel, build_prefix_cache

    build_seconds, cache_mib, data = None, None, train_set
    if method.endswith("-cache"):
        start = time.perf_counter()
        cache = build_prefix_cache(model, train_set, batch_size=args.batch_size, collate_fn=collate)
        build_seconds = time.perf_counter() - start
        cache_mib = cache.nbytes / 2**20
        model, data, collate = CachedSkipModel(model, cache), cache.dataset(), default_data_collator
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loader = DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    return Trainee(method, model, loader, optimizer, sum(p.numel() for p in params), build_seconds, cache_mib)


def step(trainee: Trainee, batch: dict[str, Any], device: Any) -> float:
    import torch

    batch = {k: v.to(device) for k, v in batch.items()}
    trainee.optimizer.zero_grad(set_to_none=True)
    output = trainee.model(**batch)
    # A timm model under SCL-FT replace fusion comes back from the PeftModel as bare logits (the tuner adds the loss
    # only for transformers models); the loss is then the cross-entropy TimmImageClassifier computes.
    loss = output.loss if hasattr(output, "loss") else torch.nn.functional.cross_entropy(output, batch["labels"])
    loss.backward()
    trainee.optimizer.step()
    return float(loss)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ============================================================================================ workers
def _setup(args: argparse.Namespace) -> Any:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def time_worker(args: argparse.Namespace, methods: list[str]) -> list[dict[str, Any]]:
    """All methods in one process, epochs timed round-robin."""
    import torch

    device = _setup(args)
    trainees, refused = [], {}
    for method in methods:
        train_set, model, collate = _load_data_and_model(args)
        try:
            trainee = prepare(method, wrap(method, model), train_set, collate, args)
        except (ValueError, NotImplementedError) as error:  # how the prefix cache refuses a model it cannot serve
            if not method.endswith("-cache"):
                raise
            refused[method] = {"method": method, "refused": f"{type(error).__name__}: {error}"}
            continue
        batches = iter(trainee.loader)
        for _ in range(args.warmup_steps):
            step(trainee, next(batches), device)
        trainees.append(trainee)
    epochs: dict[str, list[float]] = {t.method: [] for t in trainees}
    for _ in range(args.repeats):
        for trainee in trainees:
            _sync(device)
            start = time.perf_counter()
            for batch in trainee.loader:
                step(trainee, batch, device)
            _sync(device)
            epochs[trainee.method].append(time.perf_counter() - start)
    timed = {
        t.method: {
            "method": t.method,
            "epoch_seconds": min(epochs[t.method]),
            "all_epoch_seconds": [round(s, 3) for s in epochs[t.method]],
            "build_seconds": t.build_seconds,
            "cache_mib": t.cache_mib,
            "trainable": t.trainable,
            "examples": len(t.loader.dataset),
            "steps_per_epoch": len(t.loader),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        for t in trainees
    }
    return [timed.get(m) or refused[m] for m in methods]


def memory_worker(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """One method alone in this fresh process: peak memory of (building the cache and) a few training steps."""
    device = _setup(args)
    train_set, model, collate = _load_data_and_model(args)
    model = wrap(method, model)
    from harness.profiling import peak_memory  # imported here like torch: workers start lean

    with peak_memory(device) as memory:
        trainee = prepare(method, model, train_set, collate, args)
        batches = iter(trainee.loader)
        for _ in range(args.memory_steps):
            step(trainee, next(batches), device)
    return {"method": method, "peak_bytes": memory.bytes}


# ============================================================================================ driver
def _worker(args: argparse.Namespace, kind: str, methods: list[str]) -> list[dict[str, Any]]:
    command = [sys.executable, __file__, "--worker", kind, "--methods", ",".join(methods)]
    flags = (
        "task",
        "image_size",
        "max_length",
        "max_examples",
        "batch_size",
        "warmup_steps",
        "repeats",
        "memory_steps",
        "threads",
        "device",
    )
    for flag in flags:
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} worker for {methods} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if args.worker == "time":
        print(json.dumps(time_worker(args, methods)))
        return []
    if args.worker == "memory":
        print(json.dumps([memory_worker(args, m) for m in methods]))
        return []

    load_before, started = _load(), time.perf_counter()
    results = _worker(args, "time", methods)
    print(f"  timed {len(methods)} methods ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    for result in (r for r in results if "refused" not in r):
        result.update(_worker(args, "memory", [result["method"]])[0])
        print(f"  memory of {LABELS[result['method']]} measured", file=sys.stderr, flush=True)
    print_table(args, results, load_before, time.perf_counter() - started)
    return results


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.3f}" if value is not None and reference else "-"


def print_table(args: argparse.Namespace, results: list[dict[str, Any]], load_before: str, wall: float) -> None:
    timed = [r for r in results if "refused" not in r]
    by = {r["method"]: r for r in timed}
    full, lora = by.get("full"), by.get("lora")
    first, e = timed[0], args.amortise_epochs
    examples = (
        f"images at {args.image_size}x{args.image_size}"
        if args.task == "digits"
        else f"reviews at {args.max_length} tokens"
    )
    print(
        f"{TASKS[args.task][1]}: {first['examples']} training {examples}, batch {args.batch_size} "
        f"({first['steps_per_epoch']} steps/epoch), AdamW; {args.device}, torch {first['torch']}, "
        f"{first['threads']} thread(s)"
    )
    peak_what = (
        "sampled RssAnon peak above the level after loading model+data, own process"
        if args.device == "cpu"
        else "torch.cuda.max_memory_allocated above the level before"
    )
    print(
        f"epoch = fastest of {args.repeats} round-robin epochs after {args.warmup_steps} warm-up steps; "
        f"peak = {peak_what}"
    )
    header = (
        f"{'method':<24}{'trainable':>11}{'epoch s':>9}{'x full':>8}{'x LoRA':>8}{'peak MiB':>10}{'x full':>8}"
        f"{'build s':>9}{f'amort.{e} s':>10}{'x full':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if "refused" in r:
            print(f"{LABELS[r['method']]:<24}refused: {r['refused'].split('. ')[0]}")
            continue
        epoch, peak, build = r["epoch_seconds"], r["peak_bytes"] / 2**20, r["build_seconds"]
        amortised = (build + e * epoch) / e if build is not None else None
        print(
            f"{LABELS[r['method']]:<24}{r['trainable']:>11,}{epoch:>9.2f}"
            f"{_ratio(epoch, full and full['epoch_seconds']):>8}{_ratio(epoch, lora and lora['epoch_seconds']):>8}"
            f"{peak:>10.1f}{_ratio(peak, full and full['peak_bytes'] / 2**20):>8}"
            f"{(f'{build:.2f}' if build is not None else '-'):>9}"
            f"{(f'{amortised:.2f}' if amortised is not None else '-'):>10}"
            f"{_ratio(amortised, full and full['epoch_seconds']):>8}"
        )
    print("epochs (s): " + "; ".join(f"{r['method']} {r['all_epoch_seconds']}" for r in timed))
    caches = [r for r in timed if r["cache_mib"] is not None]
    if caches:
        print(f"cache: {caches[0]['cache_mib']:.2f} MiB in memory (the source block's inputs + labels)")
    print(f"load average before: {load_before}, after: {_load()}; benchmark wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
