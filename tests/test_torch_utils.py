"""The helpers issue 18 made one of each: `skipcollapse._torch_utils` (used by the cache, the probe, the collapse tools
and the adapter) and the default source block (used by the adapter and the comparison's methods)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from tiny_models import build
from torch import nn

from harness.methods import prepare
from skipcollapse import SkipCollapseConfig, discover
from skipcollapse._torch_utils import device_of, dtype_of, eval_mode, split_batch
from skipcollapse.adapter.architectures import default_source_block


def test_split_batch_dicts_with_labels_or_label() -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    for key in ("labels", "label"):
        inputs, labels = split_batch({"pixel_values": x, key: y})
        assert list(inputs) == ["pixel_values"] and inputs["pixel_values"] is x
        assert torch.equal(labels, y)
    inputs, labels = split_batch({"x": x, "labels": y, "label": y + 1})  # "labels" wins; "label" stays an input
    assert sorted(inputs) == ["label", "x"] and torch.equal(labels, y)
    _, labels = split_batch({"x": x, "labels": [0, 1, 0, 1]})
    assert isinstance(labels, torch.Tensor)
    with pytest.raises(ValueError, match=r"'labels' or 'label'; got keys \['x'\]"):
        split_batch({"x": x})


def test_split_batch_pairs_only() -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    for pair in ((x, y), [x, y]):
        inputs, labels = split_batch(pair)
        assert inputs is x and torch.equal(labels, y)
    with pytest.raises(TypeError, match="a tuple of 3 items"):
        split_batch((x, x, y))
    with pytest.raises(TypeError, match="got Tensor"):
        split_batch(x)


def test_split_batch_moves_inputs_to_the_device() -> None:
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    meta = torch.device("meta")
    inputs, labels = split_batch({"x": x, "flag": True, "labels": y}, meta)
    assert inputs["x"].device == meta and inputs["flag"] is True and labels.device == y.device
    inputs, _ = split_batch((x, y), meta)
    assert inputs.device == meta


def test_device_and_dtype_of() -> None:
    assert device_of(nn.ReLU()) == torch.device("cpu")
    assert dtype_of(nn.ReLU()) is None and dtype_of(nn.ReLU(), torch.float32) == torch.float32
    assert dtype_of(nn.Linear(2, 2).to(torch.bfloat16)) == torch.bfloat16
    assert device_of(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    embedding = nn.Embedding(3, 2, dtype=torch.float16)
    assert dtype_of(nn.Sequential(nn.Module(), embedding)) == torch.float16


def test_eval_mode_restores_every_module_own_mode() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
    model.train()
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("restored on errors too")
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_the_adapter_and_layer_ft_default_to_the_same_middle_block() -> None:
    assert default_source_block(["a", "b", "c", "d"]) == "c" and default_source_block(["a"]) == "a"
    blocks = discover(build("timm-resnet")).blocks
    want = default_source_block(blocks)
    adapted = get_peft_model(build("timm-resnet"), SkipCollapseConfig())
    assert adapted.peft_config["default"].source_layer == want
    layer_ft = prepare(build("timm-resnet"), "layer-ft")
    trained = {name for name, p in layer_ft.named_parameters() if p.requires_grad}
    assert any(name.startswith(want + ".") for name in trained)
    assert not any(name.startswith(b + ".") for b in blocks if b != want for name in trained)
