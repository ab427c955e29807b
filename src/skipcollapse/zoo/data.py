"""Small offline datasets for tests, recipes and demos.

Everything here is built from data that ships with installed packages (sklearn's
8x8 digits) or is generated from templates, so runs need no network and are
reproducible from a seed. Image tensors are float in [0, 1], NCHW; labels are
int64 class ids.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DIGITS_NATIVE_SIZE",
    "TEXT_CLASSES",
    "load_digits_images",
    "resize_images",
    "train_test_split_stratified",
    "few_shot_indices",
    "hold_out",
    "carve_validation",
    "tiny_text_classification",
]

DIGITS_NATIVE_SIZE = 8
_DIGITS_MAX = 16.0  # sklearn digits are counts of 0..16 set pixels per 4x4 cell


def _as_labels(labels: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)


def resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear resize of NCHW images to ``image_size`` (no antialias, no corner alignment).

    Bilinear interpolation is a convex combination of input pixels, so [0, 1]
    inputs stay in [0, 1]; a same-size call returns the input unchanged.
    """
    if images.shape[-2:] == (image_size, image_size):
        return images
    return F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=False)


def _digits_native(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / _DIGITS_MAX
    return images.expand(-1, channels, -1, -1).contiguous(), torch.as_tensor(digits.target, dtype=torch.long)


def load_digits_images(image_size: int = 32, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 1797 handwritten digits as ``[N, C, image_size, image_size]`` in [0, 1] and labels 0..9.

    The 8x8 originals are upsampled bilinearly and the grey channel is
    replicated so ImageNet backbones (3-channel, large inputs) can consume them.
    """
    images, labels = _digits_native(channels)
    return resize_images(images, image_size), labels


def train_test_split_stratified(
    labels: torch.Tensor | np.ndarray | Sequence[int], test_fraction: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train_idx, test_idx) with each class split in the same proportion.

    Per class, ``round(n_c * test_fraction)`` examples go to the test split, so
    class balance is preserved in both; the same seed always gives the same split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = _as_labels(labels)
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = int(round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


def few_shot_indices(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    k: int,
    seed: int,
    indices: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Sorted indices of ``k`` examples per class, drawn with a seeded generator.

    Args:
        labels: labels of the whole dataset (indices refer into it).
        k: examples per class.
        seed: same seed, same draw.
        indices: the pool to draw from (e.g. the training split); all examples if None.

    Every class present in ``labels`` must have ``k`` examples in the pool,
    otherwise a ValueError names the class and its count: a silently
    unbalanced k-shot set would bias any collapse metric computed on it.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labels = _as_labels(labels)
    pool = (
        torch.arange(len(labels))
        if indices is None
        else torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
    )
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = pool[labels[pool] == cls]
        if len(members) < k:
            raise ValueError(f"class {cls} has only {len(members)} examples in the pool, fewer than k={k}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.sort(torch.cat(chosen)).values


def hold_out(
    labels: torch.Tensor, fraction: float, seed: int, groups: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (kept, held-out) indices: a stratified ``fraction`` of each class, or with ``groups`` whole groups
    (a seeded order of them, taken until ``fraction`` of the examples is held out), so no group straddles."""
    if groups is None:
        return train_test_split_stratified(labels, test_fraction=fraction, seed=seed)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.unique(groups)
    order = ids[torch.randperm(len(ids), generator=generator)]
    sizes = torch.bincount(groups)[order]
    held_groups = order[: int(torch.searchsorted(torch.cumsum(sizes, 0), fraction * len(labels))) + 1]
    held = torch.isin(groups, held_groups)
    return torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()


GROUPED_SPLITS = 2  # the version of carve_validation's grouped draw: a result cache keys grouped tasks' runs by it


def carve_validation(
    labels: torch.Tensor, pool: torch.Tensor, per_class: int, seed: int, groups: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation, rest) indices: ``per_class`` examples of each class drawn from ``pool`` with ``seed``.

    With ``groups`` (one movie's reviews, say), no group gives validation more than one example of a class: groups
    are visited in a seeded order and each gives one example of every class still short, so a class's validation
    examples come from ``per_class`` different groups. Examples of one group are correlated; a validation set of
    a few whole groups would measure those groups, not the task. Every group that gave an example leaves the pool
    whole, so no group straddles validation and training: the price is training data (Rotten Tomatoes at 100 per
    class: about 100 of its 400 training movies, a quarter of the training snippets). Validation then weighs every
    group alike, where test weighs every example alike.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if groups is None:
        held = pool[few_shot_indices(labels[pool], per_class, seed=seed)]
        return held, pool[~torch.isin(pool, held)]
    generator = torch.Generator().manual_seed(seed)
    ids = torch.unique(groups[pool])
    short = {cls: per_class for cls in torch.unique(labels[pool]).tolist()}
    chosen: list[int] = []
    taken: list[int] = []
    for group in ids[torch.randperm(len(ids), generator=generator)].tolist():
        if not any(short.values()):
            break
        members = pool[groups[pool] == group]
        given = 0
        for cls, missing in short.items():
            of_class = members[labels[members] == cls]
            if missing and len(of_class):
                chosen.append(int(of_class[torch.randint(len(of_class), (1,), generator=generator)]))
                short[cls], given = missing - 1, given + 1
        if given:
            taken.append(group)
    if any(short.values()):
        cls = next(c for c, missing in short.items() if missing)
        raise ValueError(
            f"class {cls} appears in only {per_class - short[cls]} groups of the pool, fewer than "
            f"validation_per_class={per_class} (one validation example per group and class): lower "
            "validation_per_class"
        )
    aside = torch.isin(groups[pool], torch.tensor(taken, dtype=torch.long))
    return torch.sort(torch.tensor(chosen, dtype=torch.long)).values, pool[~aside]


# --- tiny text classification ----------------------------------------------------------------

TEXT_CLASSES: tuple[str, ...] = ("sports", "weather", "food", "tech")

# Several subjects and predicates per class, so no single token decides the label;
# the shared openers/fillers/closers put the same frequent words in every class.
_TOPIC_WORDS: dict[str, dict[str, list[str]]] = {
    "sports": {
        "subject": [
            "the striker",
            "our goalkeeper",
            "the home team",
            "the coach",
            "the marathon runner",
            "the tennis champion",
            "the referee",
            "the rookie pitcher",
            "the relay squad",
            "the captain",
        ],
        "predicate": [
            "scored twice in the second half",
            "won the championship final",
            "missed a penalty kick",
            "broke the national record",
            "signed a new contract with the club",
            "was injured during practice",
            "led the league in assists",
            "celebrated the victory with the fans",
            "lost the match in overtime",
            "trained hard before the tournament",
        ],
    },
    "weather": {
        "subject": [
            "the forecast",
            "a cold front",
            "the storm",
            "heavy fog",
            "the heatwave",
            "a thunderstorm",
            "the morning frost",
            "strong wind",
            "the monsoon",
            "light snow",
        ],
        "predicate": [
            "brought heavy rain to the coast",
            "pushed temperatures below freezing",
            "caused flooding downtown",
            "kept the sky cloudy all afternoon",
            "is expected to clear by evening",
            "dropped ten centimetres of snow",
            "made the humidity unbearable",
            "knocked down trees across the valley",
            "brought sunshine and a warm breeze",
            "delayed flights because of low visibility",
        ],
    },
    "food": {
        "subject": [
            "the chef",
            "my grandmother",
            "the bakery",
            "the new restaurant",
            "the street vendor",
            "the pastry cook",
            "our neighbour",
            "the food truck",
            "the cooking class",
            "the waiter",
        ],
        "predicate": [
            "served a spicy noodle soup",
            "baked fresh bread with garlic butter",
            "grilled salmon with lemon",
            "made a chocolate cake for dessert",
            "cooked a vegetable curry with rice",
            "recommended the cheese platter",
            "simmered tomato sauce for hours",
            "prepared dumplings stuffed with pork",
            "roasted chicken with herbs",
            "whisked eggs into a fluffy omelette",
        ],
    },
    "tech": {
        "subject": [
            "the startup",
            "the software update",
            "the new smartphone",
            "the engineers",
            "the chip maker",
            "the cloud provider",
            "the laptop",
            "the developers",
            "the robot",
            "the search engine",
        ],
        "predicate": [
            "released a faster processor",
            "patched a security vulnerability",
            "crashed after the latest firmware",
            "launched an app for encrypted messaging",
            "doubled the battery life",
            "migrated the database to the cloud",
            "trained a neural network on the servers",
            "added support for wireless charging",
            "open sourced its compiler",
            "fixed a memory leak in the kernel",
        ],
    },
}
_OPENERS = ["", "Yesterday", "This morning", "Last week", "According to the news,", "Apparently", "On Sunday", "Today"]
_CLOSERS = [
    "",
    "and everyone was talking about it",
    "which surprised nobody",
    "so people shared photos online",
    "before the weekend",
    "and the town noticed",
    "according to my friend Sam",
    "again",
]


def _sentence(rng: random.Random, topic: str) -> str:
    words = _TOPIC_WORDS[topic]
    parts = [rng.choice(_OPENERS), rng.choice(words["subject"]), rng.choice(words["predicate"]), rng.choice(_CLOSERS)]
    text = " ".join(p for p in parts if p)
    return text[0].upper() + text[1:] + "."


def tiny_text_classification(
    seed: int = 0, n_train_per_class: int = 60, n_test_per_class: int = 25
) -> tuple[list[str], list[int], list[str], list[int]]:
    """(train_texts, train_labels, test_texts, test_labels) for a 4-topic sentence task.

    Sentences are ``[opener] subject predicate [closer].`` with 10 subjects and 10
    predicates per topic (labels index ``TEXT_CLASSES``) and topic-neutral
    openers/closers. Train and test sentences are distinct; both are class
    balanced and shuffled. Deterministic for a seed.
    """
    capacity = (
        len(_OPENERS)
        * len(_CLOSERS)
        * min(len(words["subject"]) * len(words["predicate"]) for words in _TOPIC_WORDS.values())
    )
    if n_train_per_class + n_test_per_class > capacity // 2:
        raise ValueError(f"at most {capacity // 2} sentences per class can be drawn without heavy repetition")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: list[list[tuple[str, int]]] = [[], []]
    for label, topic in enumerate(TEXT_CLASSES):
        for split, n in zip(splits, (n_train_per_class, n_test_per_class)):
            count = 0
            while count < n:  # ends quickly: n is at most half the distinct sentences of a topic
                text = _sentence(rng, topic)
                if text not in seen:
                    seen.add(text)
                    split.append((text, label))
                    count += 1
    for split in splits:
        rng.shuffle(split)
    (train, test) = splits
    return [t for t, _ in train], [y for _, y in train], [t for t, _ in test], [y for _, y in test]
