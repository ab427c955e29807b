"""Offline datasets: shapes, ranges, determinism, stratification and k-shot draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from skipcollapse.zoo import data as D  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return D.load_digits_images(image_size=32)


def test_digits_shapes_and_range(digits):
    images, labels = digits
    assert images.shape == (1797, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.long
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    assert torch.equal(images[:, 0], images[:, 2])  # grey replicated
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_digits_native_size_and_one_channel():
    images, _ = D.load_digits_images(image_size=8, channels=1)
    from sklearn.datasets import load_digits

    assert torch.allclose(images[:, 0], torch.as_tensor(load_digits().images, dtype=torch.float32) / 16)


def test_stratified_split(digits):
    _, labels = digits
    train, test = D.train_test_split_stratified(labels, test_fraction=0.3, seed=0)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert len(train) + len(test) == len(labels)
    for cls in range(10):
        n = int((labels == cls).sum())
        assert abs(int((labels[test] == cls).sum()) - 0.3 * n) <= 0.5
    again = D.train_test_split_stratified(labels, test_fraction=0.3, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert not torch.equal(test, D.train_test_split_stratified(labels, 0.3, seed=1)[1])


def test_few_shot_counts_pool_and_determinism(digits):
    _, labels = digits
    train, _ = D.train_test_split_stratified(labels, seed=0)
    shots = D.few_shot_indices(labels, k=5, seed=3, indices=train)
    assert len(shots) == 50 and set(shots.tolist()) <= set(train.tolist())
    assert torch.bincount(labels[shots], minlength=10).tolist() == [5] * 10
    assert torch.equal(shots, D.few_shot_indices(labels, k=5, seed=3, indices=train))
    assert not torch.equal(shots, D.few_shot_indices(labels, k=5, seed=4, indices=train))


def test_few_shot_error_names_class_and_count():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    with pytest.raises(ValueError, match=r"class 1 has only 2 examples.*k=3"):
        D.few_shot_indices(labels, k=3, seed=0)
    with pytest.raises(ValueError, match=r"class 2 has only 0 examples"):
        D.few_shot_indices(labels, k=1, seed=0, indices=[0, 3])


def test_image_transform_normalises_per_batch_for_the_trainer(digits):
    from transformers import default_data_collator

    from skipcollapse.zoo.transforms import ImageTransform

    images, labels = digits
    grey = (images[:4, 0] * 255).round().to(torch.uint8).numpy()  # stored the way IDX files and PNGs are
    out = ImageTransform(mean=(0.5,) * 3, std=(0.5,) * 3, image_size=16)({"image": list(grey), "label": [1, 2, 3, 4]})
    assert out["pixel_values"].shape == (4, 3, 16, 16) and out["labels"] == [1, 2, 3, 4]
    assert out["pixel_values"].min() >= -1 and out["pixel_values"].max() <= 1
    assert torch.equal(out["pixel_values"][:, 0], out["pixel_values"][:, 2])  # grey replicated to 3 channels
    rows = [{"pixel_values": p, "labels": y} for p, y in zip(out["pixel_values"], out["labels"])]
    assert default_data_collator(rows)["labels"].dtype == torch.long
    with pytest.raises(ValueError, match="3 channels; the backbone takes 1"):
        ImageTransform(mean=(0.5,), std=(0.5,), image_size=8)({"image": [np.zeros((8, 8, 3))], "label": [0]})


def test_digits_task_matches_the_eager_images_bit_for_bit(digits):
    """The per-batch path gives exactly what resizing the whole array at once gives (the demo's numbers hold)."""
    from skipcollapse.zoo import Backbone, load_task

    images, labels = digits
    task = load_task("digits", k_shot=4, seed=3)
    backbone = Backbone("lite0-like", None, "image", (0.5,) * 3, (0.5,) * 3, image_size=32)
    train, test = task.dataset("train", backbone), task.dataset("test", backbone)
    train_idx, test_idx = D.train_test_split_stratified(labels, seed=0)
    first = test.__getitems__([0, 7])
    assert (
        torch.equal(first[1]["pixel_values"], images[test_idx[7]] * 2 - 1)
        and first[1]["labels"] == labels[test_idx[7]]
    )
    assert len(train) == 40 and torch.bincount(task.labels("train"), minlength=10).tolist() == [4] * 10


def test_tiny_text_classification_is_deterministic_balanced_and_not_single_token():
    train_x, train_y, test_x, test_y = D.tiny_text_classification(seed=0)
    assert (train_x, train_y, test_x, test_y) == D.tiny_text_classification(seed=0)
    assert train_x != D.tiny_text_classification(seed=1)[0]
    assert len(train_x) == 240 and len(test_x) == 100
    assert [train_y.count(c) for c in range(4)] == [60] * 4
    assert [test_y.count(c) for c in range(4)] == [25] * 4
    assert not set(train_x) & set(test_x)
    # No class-specific token covers more than a third of its class: several keywords are needed.
    for cls in range(len(D.TEXT_CLASSES)):
        mine = [set(t.lower().rstrip(".").split()) for t, y in zip(train_x, train_y) if y == cls]
        others = set().union(*(set(t.lower().rstrip(".").split()) for t, y in zip(train_x, train_y) if y != cls))
        for token in set().union(*mine) - others:
            assert sum(token in s for s in mine) <= len(mine) / 3, (D.TEXT_CLASSES[cls], token)
