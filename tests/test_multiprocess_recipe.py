"""The fine-tune recipe under `accelerate launch` with two real processes (gloo on CPU), with the collapse-aware
loss."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from skipcollapse import measure_collapse
from skipcollapse.zoo import load_backbone, load_task

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_finetune_trains_evaluates_and_saves_an_adapter_that_loads_back(tmp_path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes/accelerate/two_cpu_processes.yaml"),
        "--main_process_port",
        str(_free_port()),
        str(ROOT / "recipes/finetune.py"),
        "--k-shot",
        "6",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--nc-callback",
        "--collapse-lambda",
        "0.5",
        "--output-dir",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "world size 2" in done.stdout
    assert "'collapse_penalty'" in done.stdout + done.stderr  # the loss's parts, averaged over both processes
    result = json.loads((out / "result.json").read_text())
    assert result["train_examples"] == 60 and 0.0 <= result["test_accuracy"] <= 1.0

    # the adapter saved by rank 0 loads onto a fresh base and reproduces the evaluated accuracy
    task = load_task("digits", k_shot=6, seed=0)
    backbone = load_backbone("efficientnet_lite0", task.num_labels, image_size=32)
    model = PeftModel.from_pretrained(backbone.model, out).eval()
    test_set = task.dataset("test", backbone)
    loader = torch.utils.data.DataLoader(test_set, batch_size=128)
    correct = 0
    with torch.no_grad():
        for batch in loader:
            correct += (model(pixel_values=batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).sum().item()
    assert correct / len(test_set) == pytest.approx(result["test_accuracy"], abs=1e-9)

    # NC metrics summed over the two processes equal one process's measurement of the whole test set
    single = measure_collapse(model, torch.utils.data.DataLoader(test_set, batch_size=64), task.num_labels)
    for key in ("nc1", "cdnv", "nc3", "nc4"):
        assert result[f"test_{key}"] == pytest.approx(single[key], rel=1e-6), key
