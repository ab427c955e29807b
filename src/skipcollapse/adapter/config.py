"""The peft config of Skip-Connection Layer Fine-Tuning (SCL-FT).

The fields say *what* is adapted; `adapter.architectures` (what timm and transformers publish) and
`adapter.measure` (one example forward) say *where* those things live in a given model and what shape they have.
Fields left at ``None`` are filled in from the model when the adapter is injected, and the resolved values are what
``adapter_config.json`` stores, so a saved adapter names exactly the modules it was
trained on and refuses to load onto a different architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig

from .registration import PEFT_TYPE

TRAIN_SOURCE_CHOICES = ("full", "norms_biases", "none")
FUSION_CHOICES = ("add", "concat", "replace")
POOLING_CHOICES = ("cls", "mean", "avg", "per_token", "flatten")
PROJECTION_CHOICES = ("auto", "identity", "linear")


@dataclass
class SkipCollapseConfig(PeftConfig):
    """Configuration of a SkipCollapse adapter (Li et al., "Understanding and Improving Transfer Learning of
    Deep Models via Neural Collapse", SCL-FT).

    A skip connection carries the pooled output of one intermediate block of a frozen backbone straight to the
    classification head, so that the frozen blocks after it cannot undo the collapse that fine-tuning that block
    induces. With the defaults, ``SkipCollapseConfig()`` works on every supported architecture: it picks the middle
    block, fine-tunes it in full, adds its features to the head input through a gate that starts at zero (the
    adapted model starts out computing exactly what the base model computes; in bf16/fp16 exactly with
    ``autocast_adapter_dtype=False``, see the README), and trains the head.

    >>> import torch
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from skipcollapse import SkipCollapseConfig
    >>> base = BertForSequenceClassification(BertConfig(
    ...     vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
    ...     num_labels=3)).eval()
    >>> ids = torch.tensor([[5, 6, 7, 8]])
    >>> expected = base(input_ids=ids).logits
    >>> model = get_peft_model(base, SkipCollapseConfig())
    >>> resolved = model.peft_config["default"]
    >>> resolved.source_layer, resolved.pooling, resolved.source_dim
    ('bert.encoder.layer.2', 'cls', 16)
    >>> torch.equal(model(input_ids=ids).logits, expected)  # the gate starts at zero
    True
    """

    source_layer: str | int | None = field(
        default=None,
        metadata={
            "help": (
                "The block whose output feeds the skip connection: a module name (e.g. 'vit.encoder.layer.6') or an "
                "index into the model's block list (negative indices count from the end). None picks the middle "
                "block. Once injected, this holds the resolved module name."
            )
        },
    )
    train_source: Literal["full", "norms_biases", "none"] = field(
        default="full",
        metadata={
            "help": (
                "What of the source block trains: 'full' (SCL-FT: the whole block), 'norms_biases' (only its "
                "normalisation layers and biases), or 'none' (only the skip path and the head). A trained block is a "
                "per-adapter copy, so the base model stays untouched."
            )
        },
    )
    fusion: Literal["add", "concat", "replace"] = field(
        default="add",
        metadata={
            "help": (
                "How the skip features s reach the head: 'add' (z = h_L + g*P(s)), 'concat' (z = [h_L, g*P(s)], "
                "head widened), or 'replace' (z = P(s); the blocks after the source are not run at all)."
            )
        },
    )
    pooling: Literal["cls", "mean", "avg", "per_token", "flatten"] | None = field(
        default=None,
        metadata={
            "help": (
                "How the source block's output becomes what the head takes: 'cls' (first token of [B, T, D]), 'mean' "
                "(mean over the real tokens, padding left out), 'avg' (global average over the spatial axes of a "
                "map), "
                "'per_token' (every token: for heads that run on every token, as decoder classifiers' do, which then "
                "pick the token they classify), 'flatten'. None does what the model does to its last block's output "
                "(measured on an example batch)."
            )
        },
    )
    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": (
                "Whether the features sit on the last axis of the source block's output (tokens [B, T, D], maps "
                "[B, H, W, C] as timm's Swin stages return them) rather than on axis 1 ([B, C, H, W]); what 'avg' "
                "averages depends on it. None measures it on an example batch."
            )
        },
    )
    skip_norm: str | None = field(
        default=None,
        metadata={
            "help": (
                "Name of a (frozen) module of the base model applied to the pooled skip features, typically the "
                "model's own final norm (ViT). None follows the architecture; '' means no norm."
            )
        },
    )
    projection: Literal["auto", "identity", "linear"] = field(
        default="auto",
        metadata={
            "help": (
                "P in the formulas: 'identity' (widths must match), 'linear' (a trainable linear map), or 'auto' "
                "(identity where the widths match, linear otherwise)."
            )
        },
    )
    source_dim: int | None = field(
        default=None,
        metadata={
            "help": (
                "Width of the pooled source features. None measures it on an example batch; a given value is checked "
                "against that measurement."
            )
        },
    )
    head_module: str | None = field(
        default=None,
        metadata={
            "help": (
                "Name of the classifier's final nn.Linear, whose input is fused with the skip. It always trains "
                "(as a per-adapter copy). None follows the architecture."
            )
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": (
                "Other modules to train and save in full, as in LoRA (e.g. a new classifier's hidden layer: "
                "RoBERTa's 'classifier.dense', DistilBERT's 'pre_classifier'). None follows the architecture."
            )
        },
    )
    num_classes: int | None = field(
        default=None,
        metadata={"help": "Outputs of the head the adapter was trained with; set at injection, checked when loading."},
    )
    base_model_class: str | None = field(
        default=None,
        metadata={
            "help": (
                "Class name of the model the adapter was created for; set at injection and checked when loading, so "
                "an adapter is never silently applied to another architecture."
            )
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        _check_choice("train_source", self.train_source, TRAIN_SOURCE_CHOICES)
        _check_choice("fusion", self.fusion, FUSION_CHOICES)
        _check_choice("projection", self.projection, PROJECTION_CHOICES)
        if self.pooling is not None:
            _check_choice("pooling", self.pooling, POOLING_CHOICES)
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise TypeError(f"channels_last must be True, False or None (measure it), got {self.channels_last!r}")
        if isinstance(self.source_layer, bool) or not isinstance(self.source_layer, (str, int, type(None))):
            raise TypeError(
                f"source_layer must be a module name (str), a block index (int) or None, got {self.source_layer!r}"
            )
        if self.source_dim is not None and (
            isinstance(self.source_dim, bool) or not isinstance(self.source_dim, int) or self.source_dim <= 0
        ):
            raise ValueError(
                f"source_dim must be a positive integer width (or None to measure it), got {self.source_dim!r}"
            )
        for name in ("skip_norm", "head_module", "base_model_class"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a module name (str) or None, got {value!r}")
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]  # one name, not its characters
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
            bad = [m for m in self.modules_to_save if not isinstance(m, str) or not m]
            if bad:
                raise TypeError(f"modules_to_save must be module names (str), got {bad}")

    @property
    def target_modules(self) -> list[str] | None:
        """The two modules the adapter wraps, once resolved (peft's generic injection code reads this name)."""
        if isinstance(self.source_layer, str) and self.head_module is not None:
            return [self.source_layer, self.head_module]
        return None


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
