"""Offline datasets: shapes, ranges, determinism, stratification and k-shot draws."""

from __future__ import annotations

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


def test_image_dataset_items_normalised_for_trainer(digits):
    from transformers import default_data_collator

    images, labels = digits
    ds = D.ImageClassificationDataset(images[:4], labels[:4], mean=(0.5,) * 3, std=(0.5,) * 3)
    item = ds[1]
    assert set(item) == {"pixel_values", "labels"} and isinstance(item["labels"], int)
    assert torch.allclose(item["pixel_values"], images[1] * 2 - 1)
    batch = default_data_collator([ds[i] for i in range(len(ds))])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["labels"].dtype == torch.long


def test_digits_datasets_match_eager_images_and_k_shot(digits):
    images, labels = digits
    train, test = D.digits_datasets(image_size=32, seed=0)
    train_idx, test_idx = D.train_test_split_stratified(labels, seed=0)
    assert len(train) == len(train_idx) and len(test) == len(test_idx)
    item = test[7]
    assert torch.allclose(item["pixel_values"], images[test_idx[7]] * 2 - 1, atol=1e-6)
    assert item["labels"] == int(labels[test_idx[7]])

    few, test_again = D.digits_datasets(image_size=16, k_shot=4, seed=0)
    assert len(few) == 40 and len(test_again) == len(test)
    assert few[0]["pixel_values"].shape == (3, 16, 16)
    assert torch.bincount(few.labels, minlength=10).tolist() == [4] * 10


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
