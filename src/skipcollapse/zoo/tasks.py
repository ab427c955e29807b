"""Labelled tasks by name, for the recipes and the CLI: the offline embedded ones or a `datasets` name.

`load_task` reads the labelled data (`skipcollapse.zoo.sources`: named offline sets, local files, the hub), splits
it (fixed test and validation splits, seeded k-shot draws) and `task.datasets(backbone)` turns it into what the
transformers `Trainer` consumes (`pixel_values`/`input_ids` plus `labels`), preprocessed per batch the way the
backbone expects (`skipcollapse.zoo.transforms`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from . import data as embedded_data
from . import sources
from .backbones import Backbone
from .names import EMBEDDED_TASKS, resolve_task  # noqa: F401  (re-exported)
from .transforms import ImageTransform, TextTransform

VALIDATION_PER_CLASS = 20  # held out of the training pool for model selection, the same for every seed
DEFAULT_IMAGE_SIZE = 32  # the one input size of the demo, the fine-tune recipe and the probe (digits are 8x8)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help of the recipes and the CLI: the module docstring as written, and every option's default."""


class Splits(NamedTuple):
    """The three splits of a task, each preprocessed for one backbone."""

    train: Any
    validation: Any | None
    test: Any


@dataclass
class Task:
    """Labelled examples as `datasets` tables (an ``image`` or ``text`` column and ``label``), split three ways.

    The test split and the validation split are drawn once, from ``split_seed``, and are the same for every seed
    and method; the run's seed changes only the k-shot draw from the remaining training pool (and, in the
    recipes, the initialisation). Model selection reads validation only; test is read once per chosen setting.
    The tables hold examples as stored: `dataset` preprocesses them per batch, on access.
    """

    name: str
    modality: str
    num_labels: int
    train: Any
    test: Any
    label_names: list[str] = field(default_factory=list)
    validation: Any = None
    split_rules: dict[str, int] = field(default_factory=dict)  # versions of the split rules this task's splits used

    def labels(self, split: str) -> torch.Tensor:
        """The class ids of one split (a column read; no example is decoded)."""
        return torch.as_tensor(getattr(self, _checked(split))["label"], dtype=torch.long)

    def datasets(self, backbone: Backbone, max_length: int = 128) -> Splits:
        """Train, validation (None when the task has none) and test sets preprocessed for `backbone`."""
        return Splits(*(self.dataset(split, backbone, max_length) for split in Splits._fields))

    def dataset(self, split: str, backbone: Backbone, max_length: int = 128) -> Any:
        """One split as the Trainer consumes it (``pixel_values``/``input_ids`` and ``labels``), or None for a
        missing validation split. Texts are truncated to ``max_length`` tokens.

        A `datasets.Dataset` with the backbone's preprocessing set by ``with_transform``: it runs per batch on
        access, so memory holds one batch of model inputs, never the split. The Trainer must keep the raw columns
        the transform reads: pass ``remove_unused_columns=False`` (the recipes do).
        """
        table = getattr(self, _checked(split))
        if table is None:
            return None
        if backbone.modality != self.modality:
            raise ValueError(
                f"task {self.name!r} holds {self.modality} data but backbone {backbone.name!r} takes "
                f"{backbone.modality}"
            )
        if self.modality == "image":
            return table.with_transform(ImageTransform(backbone.mean, backbone.std, backbone.image_size))
        return table.with_transform(TextTransform(backbone.tokenizer, max_length))


def _checked(split: str) -> str:
    if split not in Splits._fields:
        raise ValueError(f"split must be one of {Splits._fields}, got {split!r}")
    return split


def load_task(
    name: str,
    *,
    k_shot: int | None = None,
    seed: int = 0,
    validation_per_class: int = VALIDATION_PER_CLASS,
    split_seed: int = 0,
    test_examples: int | None = None,
    image_column: str = "image",
    text_column: str = "text",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
) -> Task:
    """A named offline task (`skipcollapse.zoo.sources`), a local folder/file, or a `datasets` hub name.

    Splits: the test split is the source's own (or a stratified share of the pool, 30% or the source's
    ``test_fraction``, fixed by ``split_seed``; whole groups, such as one movie's reviews, go to one side),
    optionally cut to a fixed ``test_examples``; the validation split is ``validation_per_class`` examples per
    class carved from the training pool with ``split_seed`` (a source's own ``validation`` split is used when it
    has one; 0 means no validation split); ``k_shot`` then keeps k examples per class of what remains, drawn with
    ``seed``. Train, validation and test never share an example, a group or (for texts) a text, and only the
    k-shot draw depends on ``seed``.
    """
    if validation_per_class < 0:
        raise ValueError(f"validation_per_class must be >= 0, got {validation_per_class}")
    if test_examples is not None and test_examples < 1:
        raise ValueError(f"test_examples must be a positive number (or None for the whole split), got {test_examples}")
    name = resolve_task(name)
    source = sources.load_source(
        name,
        image_column=image_column,
        text_column=text_column,
        label_column=label_column,
        train_split=train_split,
        test_split=test_split,
    )
    pool = source.splits["train"]
    labels = torch.as_tensor(pool["label"], dtype=torch.long)
    groups = _group_ids(pool[source.group_column]) if source.group_column else None
    if "test" in source.splits:
        train_idx, test = torch.arange(len(pool)), source.splits["test"]
    else:
        train_idx, test_idx = embedded_data.hold_out(labels, source.test_fraction, split_seed, groups)
        test = pool.select(test_idx.tolist())
    if test_examples is not None and test_examples < len(test):
        generator = torch.Generator().manual_seed(split_seed)
        test = test.select(torch.randperm(len(test), generator=generator)[:test_examples].sort().values.tolist())
    validation = source.splits.get("validation")
    if validation is None and validation_per_class > 0:
        held, train_idx = embedded_data.carve_validation(labels, train_idx, validation_per_class, split_seed, groups)
        validation = pool.select(held.tolist())
    if source.modality == "text":  # a corpus may repeat a text (under another movie, say): keep it on one side
        test_texts = set(test["text"])
        if validation is not None:
            validation = validation.filter(lambda text: text not in test_texts, input_columns="text")
        held_out = test_texts | set(validation["text"] if validation is not None else [])
        texts = pool["text"]
        train_idx = torch.tensor([i for i in train_idx.tolist() if texts[i] not in held_out], dtype=torch.long)
    if k_shot is not None:
        train_idx = train_idx[embedded_data.few_shot_indices(labels[train_idx], k_shot, seed=seed)]
    train = pool.select(train_idx.tolist())
    keep = [source.modality, "label"]
    train, test = train.select_columns(keep), test.select_columns(keep)
    validation = validation.select_columns(keep) if validation is not None else None
    rules = {"grouped_splits": embedded_data.GROUPED_SPLITS} if groups is not None else {}
    return Task(name, source.modality, len(source.label_names), train, test, source.label_names, validation, rules)


def _group_ids(values: list[Any]) -> torch.Tensor:
    index = {v: i for i, v in enumerate(sorted(set(values)))}
    return torch.tensor([index[v] for v in values], dtype=torch.long)


def add_data_arguments(parser: Any, image_size: int | None = DEFAULT_IMAGE_SIZE) -> None:
    """The backbone and data options every recipe and the CLI share (`task_from_args` reads them back)."""
    parser.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="efficientnet_lite0, mobilenetv2, minilm (offline), timm:<name>, or a hub id / local path",
    )
    parser.add_argument(
        "--dataset",
        default="digits",
        help="digits, tiny-text, fashion-mnist, rotten-tomatoes, bbc-news (offline), a local folder or data file, "
        "or a datasets name",
    )
    parser.add_argument("--image-column", default="image", help="column of a datasets task that holds the images")
    parser.add_argument("--text-column", default="text", help="column that holds the texts")
    parser.add_argument("--label-column", default="label", help="column that holds the class ids")
    parser.add_argument("--train-split", default="train", help="split to train on")
    parser.add_argument("--test-split", default="test", help="split read once for the final test")
    parser.add_argument("--image-size", type=int, default=image_size, help="input resolution for image backbones")
    parser.add_argument("--k-shot", type=int, default=None, help="keep k training examples per class (seeded)")
    parser.add_argument(
        "--validation-per-class",
        type=int,
        default=VALIDATION_PER_CLASS,
        help="examples per class held out of training for validation (fixed across seeds)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the k-shot draw, the head's init and training")


def task_from_args(args: Any) -> Task:
    """`load_task` with the options of `add_data_arguments`."""
    return load_task(
        args.dataset,
        k_shot=args.k_shot,
        seed=args.seed,
        validation_per_class=args.validation_per_class,
        image_column=args.image_column,
        text_column=args.text_column,
        label_column=args.label_column,
        train_split=args.train_split,
        test_split=args.test_split,
    )
