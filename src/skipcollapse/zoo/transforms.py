"""Per-batch preprocessing of a task's stored examples into model inputs, set on a table with `with_transform`.

They run when a batch is read, so a split is never held as model inputs: one batch of 224 px floats exists at a
time, whatever the size of the dataset. They are classes rather than closures so that DataLoader workers can
pickle them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .data import resize_images


class ImageTransform:
    """``{"image", "label"}`` rows to ``{"pixel_values", "labels"}``: to floats in [0, 1], channels to the model's
    count (grey replicated), bilinear resize to ``image_size``, then ``(x - mean) / std``.

    Stored images may be PIL images (decoded from files), integer arrays (0..255) or float arrays in [0, 1],
    each H x W or H x W x C.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], image_size: int) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.channels = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.image_size = image_size

    def _tensor(self, image: Any) -> torch.Tensor:
        if hasattr(image, "convert"):  # a PIL image
            image = image.convert("RGB" if self.channels == 3 else "L")
        array = np.asarray(image)
        # integers are 0..255 (uint8 arrays arrive as Python ints through the table's formatter); floats are [0, 1]
        scaled = array.astype(np.float32) / 255.0 if np.issubdtype(array.dtype, np.integer) else array
        if scaled.size and (scaled.min() < 0 or scaled.max() > 1):
            raise ValueError(
                f"an image has values in [{scaled.min():g}, {scaled.max():g}]; stored images must be 8-bit integers "
                "(0..255) or floats in [0, 1]: rescale the column before loading it"
            )
        pixels = torch.from_numpy(np.ascontiguousarray(scaled)).to(torch.float32)
        pixels = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        if pixels.shape[0] == 1 and self.channels > 1:
            pixels = pixels.expand(self.channels, -1, -1)
        if pixels.shape[0] != self.channels:
            raise ValueError(f"an image has {pixels.shape[0]} channels; the backbone takes {self.channels}")
        return resize_images(pixels.unsqueeze(0), self.image_size).squeeze(0)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        images = torch.stack([self._tensor(image) for image in batch["image"]])
        return {"pixel_values": (images - self.mean) / self.std, "labels": list(batch["label"])}


class TextTransform:
    """``{"text", "label"}`` rows to token ids (truncated to ``max_length``; the collator pads each batch)."""

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        encoded = self.tokenizer(list(batch["text"]), truncation=True, max_length=self.max_length)
        return {**encoded, "labels": list(batch["label"])}
