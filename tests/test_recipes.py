"""The recipes run end to end on the offline embedded defaults (real MiniLM weights, the generated text set)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
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
    result = _recipe("finetune").main(
        [
            "--model",
            "minilm",
            "--dataset",
            "tiny-text",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--lr",
            "2e-3",
            "--nc-callback",
            "--collapse-lambda",
            "0.5",
            "--output-dir",
            str(out),
        ]
    )
    assert result["source_layer"] == "bert.encoder.layer.3"
    assert result["train_examples"] == 160 and result["validation_examples"] == 80 and result["test_examples"] == 100
    assert 0.05 < result["trainable_share"] < 0.10
    assert result["test_accuracy"] > 0.5  # 4 balanced classes: chance is 0.25
    assert result["test_nc1"] > 0 and result["train_nc1"] > 0  # the test pass is labelled test, not eval
    assert json.loads((out / "result.json").read_text())["test_accuracy"] == result["test_accuracy"]
    reloaded = PeftModel.from_pretrained(load_backbone("minilm", 4).model, out)
    assert reloaded.peft_config["default"].source_layer == "bert.encoder.layer.3"


RECIPE_COMMANDS = {
    "finetune": [sys.executable, str(RECIPES / "finetune.py")],
    "compare": [sys.executable, str(RECIPES / "compare.py")],
    "probe": [sys.executable, "-m", "skipcollapse.cli", "probe"],
}


@pytest.mark.parametrize("tool", list(RECIPE_COMMANDS))
def test_help_shows_the_shared_defaults(tool: str) -> None:
    done = subprocess.run([*RECIPE_COMMANDS[tool], "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "(default:" in text
    if tool != "compare":
        assert "(default: 32)" in text and "(default: efficientnet_lite0)" in text  # one image size everywhere


@pytest.mark.parametrize("tool", ["finetune", "probe"])
@pytest.mark.parametrize(
    "flag,name,listed",
    [("--model", "resnet-50", "efficientnet_lite0, mobilenetv2, minilm"), ("--dataset", "mnist", "digits, tiny-text")],
)
def test_wrong_names_offline_fail_at_once_with_the_choices(tool: str, flag: str, name: str, listed: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [*RECIPE_COMMANDS[tool], flag, name, "--output-dir", os.devnull + "-unused"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 2 and listed in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert elapsed < 60, f"{elapsed:.0f} s: the name must be refused before any retries"


def test_name_variants_are_recognised() -> None:
    from skipcollapse.zoo.names import resolve_backbone, resolve_task

    assert resolve_backbone("EfficientNet-Lite0") == "efficientnet_lite0" and resolve_task("tiny_text") == "tiny-text"
