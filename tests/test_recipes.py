"""The recipes run end to end on the offline embedded defaults (real MiniLM weights, the generated text set)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from peft import PeftModel

from skipcollapse.zoo import load_backbone

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_text_with_nc_callback_and_collapse_loss(tmp_path) -> None:
    out = tmp_path / "run"
    result = _recipe("finetune").main([
        "--model", "minilm", "--dataset", "tiny-text", "--epochs", "1", "--batch-size", "16", "--lr", "2e-3",
        "--nc-callback", "--collapse-lambda", "0.5", "--output-dir", str(out),
    ])
    assert result["source_layer"] == "bert.encoder.layer.3"
    assert result["train_examples"] == 160 and result["validation_examples"] == 80 and result["test_examples"] == 100
    assert 0.05 < result["trainable_share"] < 0.10
    assert result["test_accuracy"] > 0.5  # 4 balanced classes: chance is 0.25
    assert result["test_nc1"] > 0 and result["train_nc1"] > 0  # the test pass is labelled test, not eval
    assert json.loads((out / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]
    reloaded = PeftModel.from_pretrained(load_backbone("minilm", 4).model, out)
    assert reloaded.peft_config["default"].source_layer == "bert.encoder.layer.3"
