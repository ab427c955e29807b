"""Method comparison kept as files: each method tuned on validation, test read once per chosen setting.

An experiment file (``recipes/experiments/*.json``) names the setting every run shares (backbone, data, image
size, step budget, ...), the shots settings, the test seeds and the search seed, each method's search space, and,
once `search` has run, the configurations it chose, each recording what it was chosen for. The protocol:

1. Splits (`skipcollapse.zoo.tasks.load_task`): one test split and one validation split, drawn once and shared
   by every seed and method; seeds change the k-shot draw and the initialisation only.
2. Per shots setting, on the search seed (never a test seed): the NC1 probe of the training data picks a source
   block (the paper's way: no labels beyond the training set); every method runs its whole grid, in which, for
   Layer FT and SCL-FT, the source block is one axis (`NC1_BLOCK` and listed alternatives), so the block choice
   is part of the search and counts towards its effort. Every run has warmup and a cosine schedule, evaluates
   validation every ``eval_every`` steps and keeps its best checkpoint. Choices maximise validation accuracy
   (ties: lower validation cross-entropy, then grid order). A choice records the setting, search space and search
   seed it was made for; a changed file refuses to reuse it.
3. Final runs: each method with its chosen configuration, on every test seed, evaluated once on test. SCL-FT is
   also run on the NC1 block (at that block's validation-best settings) when validation chose another, so both
   choices are reported.

Search runs never build the test set (`run` only touches it when ``evaluate_test`` is set), and results are
cached per configuration (one JSON file each, written atomically), so an interrupted search resumes where it
stopped and a rerun of finished work costs nothing. The cache key covers the setting, the run's
hyper-parameters, torch's thread count, `PROTOCOL` and the versions of the split rules the task uses.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skipcollapse._io import write_atomic
from skipcollapse.collapse.distributed import is_distributed, is_main_process

from .methods import BLOCK_METHODS, METHODS

PROTOCOL = 2  # bump when what a run computes changes: cached results of another protocol are never reused
SEARCH_KEYS = ("learning_rate", "weight_decay", "source_layer", "collapse_lambda")  # what a search space may vary
NC1_BLOCK = "nc1"  # in a source_layer axis: the block the NC1 probe picks on the search seed's training data


@dataclass(frozen=True)
class Setting:
    """What every run of an experiment shares."""

    model: str = "efficientnet_lite0"
    dataset: str = "digits"
    image_size: int = 32
    steps: int = 100
    batch_size: int = 32
    warmup_ratio: float = 0.1
    eval_every: int = 20
    validation_per_class: int = 20
    test_examples: int | None = None  # a fixed subset of the test split (None: all of it)
    measure_examples: int = 2000  # NC1 of the training features and the probe read a fixed subset this large
    blocks_searched: int = 2  # entries of a source_layer axis: the NC1 block, then listed blocks other than it
    max_length: int = 128  # tokens a text example is truncated to


@dataclass(frozen=True)
class RunSpec:
    """One training run: a method with its hyper-parameters on one shots setting and seed."""

    method: str
    shots: str
    seed: int
    learning_rate: float
    source_layer: str | None = None
    collapse_lambda: float = 0.0
    weight_decay: float = 0.0
    evaluate_test: bool = False

    @property
    def k_shot(self) -> int | None:
        return None if self.shots == "full" else int(self.shots)

    def key(self, setting: Setting) -> str:
        """The cache key: the protocol, the setting, the run, torch's thread count (it orders float sums, so
        a run under another count is another result, never a cache hit) and the task's split-rule versions."""
        identity = [PROTOCOL, dataclasses.asdict(setting), dataclasses.asdict(self), torch.get_num_threads()]
        identity += _split_rules(setting)
        world, device = int(os.environ.get("WORLD_SIZE", "1")), "cuda" if torch.cuda.is_available() else "cpu"
        if (world, device) != (1, "cpu"):  # processes multiply the global batch; a GPU sums in another order
            identity.append({"world_size": world, "device": device})
        blob = json.dumps(identity, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class Experiment:
    """An experiment file: the setting, the search space and, after a search, the choices."""

    setting: Setting
    shots: list[str]
    seeds: list[int]
    search_space: dict[str, dict[str, list[Any]]]
    search_seed: int = 0
    chosen: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Experiment:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no experiment file {str(path)!r}; the shipped ones are in recipes/experiments/"
            ) from None
        unknown = set(raw.get("search_space", {})) - set(METHODS)
        if unknown:
            raise ValueError(f"{path}: search_space names unknown methods {sorted(unknown)}; methods: {list(METHODS)}")
        for method, space in raw.get("search_space", {}).items():
            if not space.get("learning_rate"):
                raise ValueError(f"{path}: search_space[{method!r}] needs a non-empty 'learning_rate' list")
            extra = set(space) - set(SEARCH_KEYS)
            if extra:
                raise ValueError(f"{path}: search_space[{method!r}] has unknown keys {sorted(extra)}")
            blocks, searched = (
                space.get("source_layer"),
                raw["setting"].get("blocks_searched", Setting.blocks_searched),
            )
            if blocks is not None and (blocks[:1] != [NC1_BLOCK] or 1 < len(blocks) <= searched):
                raise ValueError(
                    f"{path}: search_space[{method!r}]['source_layer'] must start with {NC1_BLOCK!r} and list more "
                    f"than blocks_searched={searched} entries (or only {NC1_BLOCK!r}), so its axis keeps the same "
                    f"length whichever block the probe picks; got {blocks}"
                )
        seeds, search_seed = list(raw["seeds"]), raw.get("search_seed", 0)
        if search_seed in seeds:
            raise ValueError(
                f"{path}: search_seed {search_seed} is also a test seed {seeds}; the search must not pick the "
                "configuration on a seed it is then tested on: choose a search_seed outside seeds"
            )
        return cls(
            setting=Setting(**raw["setting"]),
            shots=[str(s) for s in raw["shots"]],
            seeds=seeds,
            search_space=raw["search_space"],
            search_seed=search_seed,
            chosen=raw.get("chosen", {}),
            path=path,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "setting": dataclasses.asdict(self.setting),
            "shots": self.shots,
            "seeds": self.seeds,
            "search_seed": self.search_seed,
            "search_space": self.search_space,
            "chosen": self.chosen,
        }

    def save(self, path: str | os.PathLike | None = None) -> Path:
        target = Path(path or self.path)
        write_atomic(target, json.dumps(self.to_json(), indent=2) + "\n")
        return target

    def record(self, shots: str, method: str, entry: dict[str, Any]) -> None:
        """Set the choice of `method` at `shots` and save it to the experiment's file, if it has one.

        The file is re-read and merged under a lock, so searches of one file run side by side (one process per
        shots setting, say) keep each other's choices instead of the last save overwriting them. A merge adds and
        replaces choices, never removes one: a choice deleted from the file while a search runs comes back.
        """
        self.chosen.setdefault(shots, {})[method] = entry
        if self.path is None or not is_main_process():
            return
        import fcntl  # the recipes run on POSIX

        with open(self.path.parent / f".{self.path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            on_disk = json.loads(self.path.read_text()).get("chosen", {}) if self.path.exists() else {}
            for other_shots, methods in on_disk.items():
                self.chosen.setdefault(other_shots, {}).update(methods)
            self.chosen[shots][method] = entry
            self.save()

    def made_for(self, method: str) -> dict[str, Any]:
        """What a choice of `method` depends on: the shared setting, its search space and the search seed. A choice
        records it, and is used only while the file still says the same (`choice`)."""
        return {
            "setting": dataclasses.asdict(self.setting),
            "search_space": self.search_space[method],
            "search_seed": self.search_seed,
        }

    def choice(self, shots: str, method: str) -> dict[str, Any]:
        """The chosen configuration of `method` at `shots`; an error if there is none or it was made for another
        setting, search space or search seed than the file's (a changed file never reuses old choices)."""
        try:
            chosen = self.chosen[shots][method]
        except KeyError:
            raise KeyError(
                f"the experiment file has no chosen configuration for {method!r} at shots={shots!r}; run the search "
                "first (recipes/compare.py --search) or pick shots/methods it covers: "
                f"{ {s: sorted(m) for s, m in self.chosen.items()} }"
            ) from None
        made_for, now = chosen.get("made_for"), self.made_for(method)
        if made_for != now:
            changed = sorted(k for k in now if (made_for or {}).get(k) != now[k])
            raise KeyError(
                f"the chosen configuration of {method!r} at shots={shots!r} was made for another {', '.join(changed)} "
                "than the experiment file now has; rerun the search (recipes/compare.py --search) for this setting"
            )
        return chosen


class ResultCache:
    """Finished runs as one JSON file per configuration key; only the main process writes."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.directory / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, key: str, result: dict[str, Any]) -> None:
        if is_main_process():
            write_atomic(self.directory / f"{key}.json", json.dumps(result, indent=2) + "\n")


def _agreed(value: Any) -> Any:
    """Rank 0's `value` on every process (the cache decision must be the same everywhere)."""
    if not is_distributed():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------------------------- one run
Runner = Callable[[Setting, RunSpec], dict[str, Any]]


def cached_run(setting: Setting, spec: RunSpec, cache: ResultCache, runner: Runner | None = None) -> dict[str, Any]:
    """The result of `spec`, from the cache or by training (then cached)."""
    key = spec.key(setting)
    hit = _agreed(cache.get(key))
    if hit is not None:
        return {**hit, "cached": True}
    start = time.perf_counter()
    result = {**dataclasses.asdict(spec), **(runner or run)(setting, spec), "key": key}
    result["seconds"] = round(time.perf_counter() - start, 1)
    result.update(setting=dataclasses.asdict(setting), threads=torch.get_num_threads(), cpu=cpu_model())
    cache.put(key, result)  # the file says what it is a result of, the CPU included (float order depends on it)
    return {**result, "cached": False}


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else `platform.processor`). Results record it but the cache key
    does not: committed results stay hits on another machine, and a reader can see which CPU made which number."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(setting: Setting, spec: RunSpec) -> dict[str, Any]:
    """Train one configuration with the transformers Trainer; keep the checkpoint best on validation.

    Returns validation accuracy and cross-entropy of the best checkpoint and its step, trainable parameters,
    and, with ``spec.evaluate_test``, test accuracy and NC1 of the head input on train and test (the test set is
    built only then).
    """
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from skipcollapse.collapse.features import shard_loader
    from skipcollapse.integrations.callbacks import measure_collapse
    from skipcollapse.integrations.trainer import CollapseTrainer
    from skipcollapse.zoo.backbones import load_backbone

    from .methods import prepare

    task = _task(setting, spec.shots, spec.seed)
    torch.manual_seed(spec.seed)
    backbone = load_backbone(setting.model, task.num_labels, image_size=setting.image_size)
    train = task.dataset("train", backbone, max_length=setting.max_length)
    validation = task.dataset("validation", backbone, max_length=setting.max_length)
    if validation is None:
        raise ValueError(f"task {setting.dataset!r} has no validation split: set validation_per_class > 0")
    model = prepare(backbone.model, spec.method, source_layer=spec.source_layer)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    collate = backbone.collator()

    class KeepBest(TrainerCallback):
        """Snapshot the model whenever validation improves; the run ends on the best snapshot."""

        best: tuple[float, float] = (-1.0, 0.0)
        step = 0
        state: dict[str, torch.Tensor] | None = None

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs) -> None:
            if "eval_accuracy" not in metrics:  # the final test evaluation is not a candidate
                return
            score = (metrics["eval_accuracy"], -metrics["eval_cross_entropy"])
            if score > self.best:
                self.best, self.step = score, state.global_step
                self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    keep = KeepBest()
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=setting.steps,
            per_device_train_batch_size=setting.batch_size,
            per_device_eval_batch_size=2 * setting.batch_size,
            learning_rate=spec.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=math.ceil(setting.warmup_ratio * setting.steps),
            weight_decay=spec.weight_decay,
            eval_strategy="steps",
            eval_steps=setting.eval_every,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            seed=spec.seed,
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,  # the per-batch transform reads the raw columns
            use_cpu=not torch.cuda.is_available(),  # CPU-only processes train with DDP over gloo
        )
        common = dict(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=validation,
            data_collator=collate,
            compute_metrics=_accuracy_and_cross_entropy,
            callbacks=[keep],
        )
        if spec.method == "scl-ft+collapse":
            trainer = CollapseTrainer(**common, collapse_lambda=spec.collapse_lambda, num_classes=task.num_labels)
        else:
            trainer = Trainer(**common)
        trainer.remove_callback(PrinterCallback)  # the recipe reports progress per run, not per log line
        trainer.train()
        if keep.state is None:
            raise ValueError(f"no validation ran: eval_every={setting.eval_every} exceeds steps={setting.steps}")
        model.load_state_dict(keep.state)
        result: dict[str, Any] = {
            "validation_accuracy": keep.best[0],
            "validation_cross_entropy": -keep.best[1],
            "best_step": keep.step,
            "train_examples": len(train),
            "validation_examples": len(validation),
            "trainable_params": trainable,
            "total_params": total,
            "trainable_share": trainable / total,
        }
        if spec.evaluate_test:
            batch = 2 * setting.batch_size
            test = task.dataset("test", backbone, max_length=setting.max_length)  # the one read of test
            for name, dataset in (("train", _fixed_subset(train, setting.measure_examples)), ("test", test)):
                loader = shard_loader(dataset, batch, collate, args.process_index, args.world_size)
                try:
                    result[f"nc1_{name}"] = measure_collapse(model, loader, task.num_labels, nc4=False)["nc1"]
                except ValueError as undefined:  # e.g. a diverged run whose features no longer separate classes
                    result[f"nc1_{name}"], result[f"nc1_{name}_undefined"] = None, str(undefined)
            result["test_accuracy"] = trainer.evaluate(test, metric_key_prefix="test")["test_accuracy"]
            result["test_examples"] = len(test)
    return result


@functools.cache
def _split_rules(setting: Setting) -> tuple[dict[str, int], ...]:
    """The versions of the split rules the setting's task uses (`Task.split_rules`), for the cache keys: a change
    of how a task is split (grouped validation, say) makes its old results misses, not silent hits. Empty for
    tasks no such change has touched, so their keys stay what they were. Loaded once per setting and process."""
    rules = _task(setting, "full", 0).split_rules
    return (rules,) if rules else ()


def _task(setting: Setting, shots: str, seed: int) -> Any:
    """The task of one run: fixed test and validation splits, the k-shot draw of `seed`."""
    from skipcollapse.zoo.tasks import load_task

    return load_task(
        setting.dataset,
        k_shot=None if shots == "full" else int(shots),
        seed=seed,
        validation_per_class=setting.validation_per_class,
        test_examples=setting.test_examples,
    )


def _fixed_subset(dataset: Any, size: int) -> Any:
    """The first `size` examples of a fixed permutation (seed 0): the same subset for every run and method."""
    if len(dataset) <= size:
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:size].sort().values.tolist()
    return torch.utils.data.Subset(dataset, keep)


def _accuracy_and_cross_entropy(prediction: Any) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(prediction.label_ids), dtype=torch.long)
    return {
        "accuracy": float((logits.argmax(-1) == labels).double().mean()),
        "cross_entropy": float(torch.nn.functional.cross_entropy(logits, labels)),
    }


# --------------------------------------------------------------------------------------------- search
def grid(space: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the search space, in file order (learning rate varying fastest)."""
    combos: list[dict[str, Any]] = [{}]
    for name in sorted(space, key=lambda n: n != "learning_rate"):
        combos = [{**c, name: value} for value in space[name] for c in combos]
    return combos


def select(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The validation-best result: highest accuracy, then lowest cross-entropy, then the first in grid order.

    Reads only validation fields: a result carrying test numbers is refused, so selection cannot peek at test.
    """
    results = list(results)
    if not results:
        raise ValueError("nothing to select from")
    for r in results:
        if any(k.startswith("test_") or k == "nc1_test" for k in r):
            raise ValueError("selection was handed a result with test numbers; tune on validation only")
    best = results[0]
    for r in results[1:]:
        if (r["validation_accuracy"], -r["validation_cross_entropy"]) > (
            best["validation_accuracy"],
            -best["validation_cross_entropy"],
        ):
            best = r
    return best


def probe_block(setting: Setting, shots: str, seed: int, cache: ResultCache) -> str:
    """The source block the NC1 probe recommends on the training data of this shots setting and seed."""
    from skipcollapse.probe import probe_layers
    from skipcollapse.zoo.backbones import load_backbone

    identity = ["probe", PROTOCOL, dataclasses.asdict(setting), shots, seed, *_split_rules(setting)]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]
    hit = _agreed(cache.get(key))
    if hit is not None:
        return hit["recommended"]
    task = _task(setting, shots, seed)
    backbone = load_backbone(setting.model, task.num_labels, image_size=setting.image_size)
    report = probe_layers(
        backbone.model,
        task.dataset("train", backbone, max_length=setting.max_length),
        task.num_labels,
        batch_size=2 * setting.batch_size,
        collate_fn=backbone.collator(),
        max_examples=setting.measure_examples,
        progress=False,
    )
    result = {"recommended": report.recommended.name, "nc1": {r.name: r.nc1 for r in report.layers}}
    cache.put(key, result)
    return result["recommended"]


def block_axis(axis: list[str], nc1_block: str, size: int) -> list[str]:
    """A search space's ``source_layer`` values made concrete: `NC1_BLOCK` becomes the probe's pick, and the first
    `size` distinct blocks are kept, so the axis has the same length whichever block the probe picks."""
    concrete = [nc1_block if block == NC1_BLOCK else block for block in axis]
    return list(dict.fromkeys(concrete))[:size]


def search_grid(experiment: Experiment, method: str, nc1_block: str | None) -> list[dict[str, Any]]:
    """Every configuration the search runs for `method`: its space's grid, with the block axis made concrete.
    The count is the method's search effort; the shipped experiment files give every method the same count."""
    space = dict(experiment.search_space[method])
    if "source_layer" in space:
        if method not in BLOCK_METHODS:
            raise ValueError(f"search_space[{method!r}] has a source_layer axis, but {method} trains no source block")
        space["source_layer"] = block_axis(space["source_layer"], nc1_block, experiment.setting.blocks_searched)
    elif method in BLOCK_METHODS:
        space["source_layer"] = [nc1_block]
    return grid(space)


def search(
    experiment: Experiment,
    cache: ResultCache,
    shots_list: list[str] | None = None,
    methods: list[str] | None = None,
    runner: Runner | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Tune every method on validation (see the module docstring); records the choices in ``experiment.chosen``.

    Returns ``{shots: {method: {hyper-parameters..., "source_layer", "nc1_source_layer", "nc1_choice",
    "validation_accuracy", "configurations", "grid": [...], "made_for"}}}``. A block is one axis of the grid, not
    a sweep after it, so every block is tried at every learning rate. Every run goes through the cache, so a
    repeated or resumed search trains nothing twice.
    """
    setting, seed = experiment.setting, experiment.search_seed
    methods = methods or list(experiment.search_space)
    for shots in shots_list or experiment.shots:
        nc1_block = probe_block(setting, shots, seed, cache)
        for method in methods:
            configurations = search_grid(experiment, method, nc1_block)
            tried = []
            for params in configurations:
                spec = RunSpec(method, shots, seed, **params)
                if progress:
                    progress(f"search {shots}-shot {method} {params}")
                tried.append(cached_run(setting, spec, cache, runner))
            best = select(tried)
            keys = list(configurations[0])
            entry: dict[str, Any] = {
                **{k: best[k] for k in keys},
                "source_layer": best["source_layer"],
                "nc1_source_layer": nc1_block if method in BLOCK_METHODS else None,
                "validation_accuracy": best["validation_accuracy"],
                "configurations": len(configurations),
                "grid": [{**{k: r[k] for k in keys}, "validation_accuracy": r["validation_accuracy"]} for r in tried],
                "made_for": experiment.made_for(method),
            }
            if method in BLOCK_METHODS:  # the paper's choice: the NC1 block, at its validation-best settings
                on_nc1 = select(r for r in tried if r["source_layer"] == nc1_block)
                entry["nc1_choice"] = {k: on_nc1[k] for k in keys}
            experiment.record(shots, method, entry)  # choices land in the file as made: a stopped search keeps them
    return experiment.chosen


def final_specs(experiment: Experiment, shots: str, method: str, seeds: Iterable[int]) -> list[tuple[str, RunSpec]]:
    """(row label, spec) of the test runs of one method: its chosen configuration on every seed, and for SCL-FT
    also the NC1 block at its own validation-best settings where validation chose another block (the paper's
    choice, made operational). A test seed equal to the search seed is refused."""
    seeds = list(seeds)
    if experiment.search_seed in seeds:
        raise ValueError(
            f"seed {experiment.search_seed} is the search seed of {experiment.path}: test on other seeds "
            f"(the file's test seeds: {experiment.seeds})"
        )
    choice = experiment.choice(shots, method)
    keys = [k for k in choice["grid"][0] if k != "validation_accuracy"]
    variants = [(method, {k: choice[k] for k in keys})]
    if method == "scl-ft" and choice["nc1_choice"]["source_layer"] != choice["source_layer"]:
        variants.append((f"{method} (NC1 block)", choice["nc1_choice"]))
    out = []
    for label, params in variants:
        params = {**params, "source_layer": params.get("source_layer")}
        out += [(label, RunSpec(method, shots, seed, evaluate_test=True, **params)) for seed in seeds]
    return out


# --------------------------------------------------------------------------------------------- report
def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (shots, row label): test accuracy mean and std over seeds, and the run's constants."""
    table = []
    for shots in dict.fromkeys(r["shots"] for r in rows):
        for label in dict.fromkeys(r["label"] for r in rows if r["shots"] == shots):
            runs = [r for r in rows if r["shots"] == shots and r["label"] == label]
            acc = [100 * r["test_accuracy"] for r in runs]
            table.append(
                {
                    "shots": shots,
                    "method": label,
                    "seeds": len(runs),
                    "accuracy_mean": statistics.mean(acc),
                    "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else math.nan,
                    "learning_rate": runs[0]["learning_rate"],
                    "collapse_lambda": runs[0]["collapse_lambda"],
                    "weight_decay": runs[0].get("weight_decay", 0.0),
                    "source_layer": runs[0]["source_layer"],
                    "trainable_params": runs[0]["trainable_params"],
                    "trainable_share": runs[0]["trainable_share"],
                    "nc1_train": _mean_defined(r["nc1_train"] for r in runs),
                    "nc1_test": _mean_defined(r["nc1_test"] for r in runs),
                }
            )
    return table


def _mean_defined(values: Iterable[float | None]) -> float:
    """The mean of the defined values (NC1 is undefined for a run whose class means coincide); NaN if none is."""
    defined = [v for v in values if v is not None]
    return statistics.mean(defined) if defined else math.nan


def seed_differences(rows: list[dict[str, Any]], shots: str, mine: str, other: str) -> list[float]:
    """Per-seed test accuracy differences, in points, of row label `mine` minus `other` at `shots` (seeds both ran,
    in seed order: the same test split and k-shot draw on each side)."""
    a = {r["seed"]: r["test_accuracy"] for r in rows if r["shots"] == shots and r["label"] == mine}
    b = {r["seed"]: r["test_accuracy"] for r in rows if r["shots"] == shots and r["label"] == other}
    return [100 * (a[s] - b[s]) for s in sorted(set(a) & set(b))]


def paired(rows: list[dict[str, Any]], reference: str = "scl-ft") -> list[dict[str, Any]]:
    """`reference` against every other row label of the same shots setting, seed by seed (same test split)."""
    out = []
    for shots in dict.fromkeys(r["shots"] for r in rows):
        mine = {r["seed"]: r for r in rows if r["shots"] == shots and r["label"] == reference}
        for label in dict.fromkeys(r["label"] for r in rows if r["shots"] == shots and r["label"] != reference):
            theirs = {r["seed"]: r for r in rows if r["shots"] == shots and r["label"] == label}
            seeds = sorted(set(mine) & set(theirs))
            if not seeds:
                continue
            diffs = seed_differences(rows, shots, reference, label)
            out.append(
                {
                    "shots": shots,
                    "reference": reference,
                    "other": label,
                    "seeds": len(seeds),
                    "mean_difference": statistics.mean(diffs),
                    "std_difference": statistics.stdev(diffs) if len(diffs) > 1 else math.nan,
                    "wins": sum(d > 0 for d in diffs),
                    "ties": sum(d == 0 for d in diffs),
                    "param_ratio": theirs[seeds[0]]["trainable_params"] / mine[seeds[0]]["trainable_params"],
                }
            )
    return out
