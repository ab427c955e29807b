"""`skipcollapse probe` end to end: on tiny models saved to disk (fast) and on the embedded EfficientNet-Lite0."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from skipcollapse import SkipCollapseConfig
from skipcollapse.cli import main
from skipcollapse.zoo import load_backbone

REPO = Path(__file__).resolve().parents[1]


def save_tiny_vit(path: Path, seed: int) -> str:
    """A 3-block ViT for 32×32 images with its image processor: loadable by name like any hub checkpoint."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
    )
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


RECOMMENDED = re.compile(r"Recommended SCL-FT source block: (\S+) \(index (\d+)\)")


def test_probe_command_on_a_local_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = save_tiny_vit(tmp_path / "vit", seed=0)
    out = tmp_path / "out"
    assert (
        main(
            [
                "probe",
                "--model",
                model_dir,
                "--dataset",
                "digits",
                "--max-examples",
                "64",
                "--batch-size",
                "16",
                "--output-dir",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "64 training examples, 10 classes, cls pooling + vit.layernorm" in printed
    for i in range(3):
        assert f"vit.layers.{i}" in printed

    payload = json.loads((out / "probe.json").read_text())
    assert [layer["num_examples"] for layer in payload["layers"]] == [64, 64, 64]
    name, index = RECOMMENDED.search(printed).groups()
    assert payload["recommended"] == {"name": name, "index": int(index)}
    nc1 = [layer["nc1"] for layer in payload["layers"]]
    assert int(index) == min(range(2), key=lambda i: nc1[i])  # the rule: lowest NC1 but the last block
    with (out / "probe.csv").open() as handle:
        assert [row["name"] for row in csv.DictReader(handle)] == [f"vit.layers.{i}" for i in range(3)]
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG"

    # The printed block is a valid source layer for the adapter, by name and by index.
    for source in (name, int(index)):
        adapted = get_peft_model(load_backbone(model_dir, 10).model, SkipCollapseConfig(source_layer=source))
        assert adapted.peft_config["default"].source_layer == name


def test_ranking_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = [save_tiny_vit(tmp_path / f"vit{s}", seed=s) for s in (0, 1)]
    out = tmp_path / "rank"
    main(
        [
            "probe",
            "--models",
            ",".join(names),
            "--dataset",
            "digits",
            "--max-examples",
            "60",
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    with (out / "ranking.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["name"] for r in rows) == sorted(names)
    assert [r["rank_nc1"] for r in rows] == ["1", "2"]
    assert float(rows[0]["nc1"]) < float(rows[1]["nc1"])
    assert {r["rank_logme"] for r in rows} == {"1", "2"} and all(r["num_examples"] == "60" for r in rows)
    assert "nc1 (rank)" in capsys.readouterr().out
    assert not (out / "probe.csv").exists()


def test_probe_command_on_embedded_efficientnet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The real ImageNet EfficientNet-Lite0 on scikit-learn digits, as a user runs it (small and low-res)."""
    main(
        [
            "probe",
            "--model",
            "efficientnet_lite0",
            "--dataset",
            "digits",
            "--max-examples",
            "64",
            "--image-size",
            "32",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    payload = json.loads((tmp_path / "probe.json").read_text())
    assert len(payload["layers"]) == 16 and payload["pooling"] == "avg"
    assert [layer["width"] for layer in payload["layers"]][:3] == [16, 24, 24]
    assert payload["layers"][-1]["width"] == 320
    name, index = RECOMMENDED.search(printed).groups()
    assert name == f"timm_model.blocks.{name.split('.')[2]}.{name.split('.')[3]}" and 0 <= int(index) < 15
    nc1 = [layer["nc1"] for layer in payload["layers"]]
    # Pre-trained features collapse the digits far more in the middle of the network than after the stem.
    assert min(nc1[:-1]) < 0.25 * nc1[0]


@pytest.mark.slow
def test_recipe_in_two_processes_matches_one(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--max-examples", "50", "--image-size", "32", "--batch-size", "8"]
    recipe = str(REPO / "recipes" / "probe_layers.py")
    single = subprocess.run(
        [sys.executable, recipe, *args, "--output-dir", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert "Recommended SCL-FT source block" in single.stdout
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = subprocess.run(
        [*launcher, recipe, *args, "--output-dir", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    assert "2 process(es)" in double.stdout
    one, two = (json.loads((tmp_path / d / "probe.json").read_text()) for d in ("one", "two"))
    assert one["recommended"] == two["recommended"]
    for a, b in zip(one["layers"], two["layers"]):
        assert b["num_examples"] == 50
        for key in ("nc1", "cdnv", "h_score", "logme"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (a["name"], key, a[key], b[key])


@pytest.mark.parametrize(
    "option,value", [("--image-size", "0"), ("--image-size", "-3"), ("--batch-size", "0"), ("--max-examples", "0")]
)
def test_numeric_options_are_checked_before_any_work(option: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", option, value])
    assert exit_info.value.code == 2 and f"{option} must be a positive integer" in capsys.readouterr().err


def test_an_unwritable_output_folder_is_refused_before_the_probe_runs(tmp_path, capsys) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "--output-dir", str(blocked / "out")])
    assert exit_info.value.code == 2 and "is not a writable folder" in capsys.readouterr().err


def test_an_interrupted_save_leaves_the_previous_files(tmp_path, monkeypatch) -> None:
    from skipcollapse.probe import LayerReport, LayerRow

    report = LayerReport(
        [LayerRow(0, "a", 4, 10, nc1=1.0), LayerRow(1, "b", 4, 10, nc1=0.5)], num_classes=2, pooling="avg"
    )
    written = report.save(tmp_path)
    before = {p.name: p.read_bytes() for p in written}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LayerReport, "plot", interrupted)  # Ctrl-C while the last of the three files is written
    changed = LayerReport(
        [LayerRow(0, "a", 4, 10, nc1=2.0), LayerRow(1, "b", 4, 10, nc1=3.0)], num_classes=2, pooling="avg"
    )
    with pytest.raises(KeyboardInterrupt):
        changed.save(tmp_path)
    assert {p.name: p.read_bytes() for p in written} == before  # the old set, not a new CSV beside an old PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.csv", "probe.json", "probe.png"]


def test_a_missing_recipes_extra_names_the_extra(monkeypatch, capsys, tmp_path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    assert main(["probe", "--output-dir", str(tmp_path)]) == 2
    assert "scikit-learn, from the [recipes] extra: pip install 'skipcollapse[recipes]'" in capsys.readouterr().err
