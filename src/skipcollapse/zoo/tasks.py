"""Labelled tasks by name, for the recipes and the CLI: the offline embedded ones or a `datasets` name.

`load_task` reads the labelled data (it decides the number of classes) and `task.datasets(backbone)` turns it
into what the transformers `Trainer` consumes (`pixel_values`/`input_ids` plus `labels`), preprocessed the way
the backbone expects. Embedded names: `digits` (scikit-learn's handwritten digits) and `tiny-text` (a generated
4-topic set).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from . import data as embedded_data
from .backbones import Backbone
from .names import EMBEDDED_TASKS, resolve_task  # noqa: F401  (re-exported)

VALIDATION_PER_CLASS = 20  # held out of the training pool for model selection, the same for every seed
DEFAULT_IMAGE_SIZE = 32  # the one input size of the demo, the fine-tune recipe and the probe (digits are 8x8)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help of the recipes and the CLI: the module docstring as written, and every option's default."""


class Splits(NamedTuple):
    """The three splits of a task, each preprocessed for one backbone."""

    train: Dataset
    validation: Dataset | None
    test: Dataset


@dataclass
class Task:
    """Labelled data in raw form (image tensors in [0, 1] or texts), split three ways.

    The test split and the validation split are drawn once, from ``split_seed``, and are the same for every seed
    and method; the run's seed changes only the k-shot draw from the remaining training pool (and, in the
    recipes, the initialisation). Model selection reads validation only; test is read once per chosen setting.
    """

    name: str
    modality: str
    num_labels: int
    train_inputs: Any
    train_labels: torch.Tensor
    test_inputs: Any
    test_labels: torch.Tensor
    label_names: list[str] = field(default_factory=list)
    validation_inputs: Any = None
    validation_labels: torch.Tensor | None = None

    def datasets(self, backbone: Backbone) -> Splits:
        """Train, validation (None when the task has none) and test sets preprocessed for `backbone`."""
        return Splits(*(self.dataset(split, backbone) for split in Splits._fields))

    def dataset(self, split: str, backbone: Backbone) -> Dataset | None:
        """One split preprocessed for `backbone`, as the Trainer consumes it (None for a missing validation split).

        Only the split asked for is touched: model selection builds train and validation, never test.
        """
        if split not in Splits._fields:
            raise ValueError(f"split must be one of {Splits._fields}, got {split!r}")
        if backbone.modality != self.modality:
            raise ValueError(
                f"task {self.name!r} holds {self.modality} data but backbone {backbone.name!r} takes "
                f"{backbone.modality}"
            )
        inputs, labels = getattr(self, f"{split}_inputs"), getattr(self, f"{split}_labels")
        if labels is None:
            return None
        if self.modality == "image":
            return embedded_data.ImageClassificationDataset(
                inputs, labels, backbone.mean, backbone.std, image_size=backbone.image_size
            )
        return _TokenizedTexts(backbone.tokenizer, inputs, labels)


class _TokenizedTexts(Dataset):
    def __init__(self, tokenizer: Any, texts: list[str], labels: torch.Tensor, max_length: int = 128) -> None:
        self.encodings = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = int(self.labels[i])
        return item


def load_task(
    name: str,
    *,
    k_shot: int | None = None,
    seed: int = 0,
    validation_per_class: int = VALIDATION_PER_CLASS,
    split_seed: int = 0,
    image_column: str = "image",
    text_column: str = "text",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
) -> Task:
    """`digits`, `tiny-text`, or a `datasets` name / local data files (with their column and split names).

    Splits: the test split is fixed by ``split_seed`` (the dataset's own test split, or a stratified 30% of the
    embedded sets); the validation split is ``validation_per_class`` examples per class carved from the training
    pool with ``split_seed`` (a dataset's own ``validation`` split is used when it has one; 0 means no
    validation split); ``k_shot`` then keeps k examples per class of what remains, drawn with ``seed``.
    Train, validation and test never share an example, and only the k-shot draw depends on ``seed``.
    """
    if validation_per_class < 0:
        raise ValueError(f"validation_per_class must be >= 0, got {validation_per_class}")
    name = resolve_task(name)
    if name == "digits":
        images, labels = embedded_data.load_digits_images(image_size=8)
        train_idx, test_idx = embedded_data.train_test_split_stratified(labels, test_fraction=0.3, seed=split_seed)
        task = Task(
            name,
            "image",
            10,
            images[train_idx],
            labels[train_idx],
            images[test_idx],
            labels[test_idx],
            [str(d) for d in range(10)],
        )
    elif name == "tiny-text":
        train_x, train_y, test_x, test_y = embedded_data.tiny_text_classification(seed=split_seed)
        task = Task(
            name,
            "text",
            len(embedded_data.TEXT_CLASSES),
            train_x,
            torch.tensor(train_y),
            test_x,
            torch.tensor(test_y),
            list(embedded_data.TEXT_CLASSES),
        )
    else:
        task = _load_hf_task(name, image_column, text_column, label_column, train_split, test_split)
    if task.validation_labels is None and validation_per_class > 0:
        held = embedded_data.few_shot_indices(task.train_labels, validation_per_class, seed=split_seed)
        rest = torch.ones(len(task.train_labels), dtype=torch.bool)
        rest[held] = False
        task.validation_inputs, task.validation_labels = _take(task.train_inputs, held), task.train_labels[held]
        _keep(task, torch.nonzero(rest).flatten())
    if k_shot is not None:
        _keep(task, embedded_data.few_shot_indices(task.train_labels, k_shot, seed=seed))
    return task


def _keep(task: Task, index: torch.Tensor) -> None:
    task.train_inputs = _take(task.train_inputs, index)
    task.train_labels = task.train_labels[index]


def add_data_arguments(parser: Any, image_size: int | None = DEFAULT_IMAGE_SIZE) -> None:
    """The backbone and data options every recipe and the CLI share (`task_from_args` reads them back)."""
    parser.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="efficientnet_lite0, minilm (offline), timm:<name>, or a hub id / local path",
    )
    parser.add_argument(
        "--dataset", default="digits", help="digits, tiny-text (offline), or a datasets name / local path"
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


def _take(inputs: Any, index: torch.Tensor) -> Any:
    return inputs[index] if isinstance(inputs, torch.Tensor) else [inputs[i] for i in index.tolist()]


def _load_hf_task(
    name: str, image_column: str, text_column: str, label_column: str, train_split: str, test_split: str
) -> Task:
    import datasets

    splits = datasets.load_dataset(name)
    missing = [s for s in (train_split, test_split) if s not in splits]
    if missing:
        raise ValueError(
            f"dataset {name!r} has no split(s) {missing}; it has {list(splits)} (set --train-split/--test-split)"
        )
    train, test = splits[train_split], splits[test_split]
    if label_column not in train.column_names:
        raise ValueError(f"dataset {name!r} has no column {label_column!r}; columns: {train.column_names}")
    feature = train.features[label_column]
    label_names = list(getattr(feature, "names", []) or [])
    num_labels = len(label_names) or int(max(train[label_column])) + 1
    parts = [train, test] + (
        [splits["validation"]] if "validation" in splits and "validation" not in (train_split, test_split) else []
    )
    labels = [torch.tensor(split[label_column]) for split in parts]
    if image_column in train.column_names:
        inputs = [_images_to_tensor(split[image_column]) for split in parts]
        modality = "image"
    elif text_column in train.column_names:
        inputs = [split[text_column] for split in parts]
        modality = "text"
    else:
        raise ValueError(
            f"dataset {name!r} has neither an image column {image_column!r} nor a text column {text_column!r}; "
            f"columns: {train.column_names} (set --image-column or --text-column)"
        )
    task = Task(name, modality, num_labels, inputs[0], labels[0], inputs[1], labels[1], label_names)
    if len(parts) == 3:
        task.validation_inputs, task.validation_labels = inputs[2], labels[2]
    return task


def _images_to_tensor(images: list[Any], size: int = 224) -> torch.Tensor:
    """PIL images to one [N, 3, size, size] tensor in [0, 1] (resized once, so per-epoch work stays small)."""
    import numpy as np

    arrays = [np.asarray(img.convert("RGB").resize((size, size))) for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
