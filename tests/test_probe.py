"""The layer probe and the backbone ranking on tiny models, checked against direct computations.

Also a real 2-process (gloo) run: this file doubles as the worker
(``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/test_probe.py OUT_DIR``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from tiny_models import build
from torch import nn
from torch.utils.data import DataLoader

from skipcollapse import SkipCollapseConfig, discover
from skipcollapse.adapter.layer import SkipSourceLayer
from skipcollapse.collapse.metrics import collapse_metrics
from skipcollapse.collapse.transferability import h_score, logme
from skipcollapse.probe import (
    LayerReport,
    LayerRow,
    probe_layers,
    rank_backbones,
    rank_correlation,
    recommend_layer,
    score_correlations,
)

K = 3
N = 48


def vit_dataset(n: int = N, seed: int = 0) -> list[dict]:
    """Images whose class shifts their mean, so that the random ViT's blocks separate the classes a little."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    pixels = torch.randn(n, 3, 16, 16, generator=g) + 0.5 * labels[:, None, None, None].float()
    return [{"pixel_values": pixels[i], "labels": int(labels[i])} for i in range(n)]


def resnet_dataset(n: int = N, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    pixels = torch.randn(n, 3, 32, 32, generator=g) + 0.5 * labels[:, None, None, None].float()
    return [(pixels[i], int(labels[i])) for i in range(n)]


def stack(data: list) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data[0], dict):
        return torch.stack([d["pixel_values"] for d in data]), torch.tensor([d["labels"] for d in data])
    return torch.stack([d[0] for d in data]), torch.tensor([d[1] for d in data])


def direct_block_features(model: nn.Module, family: str, data: list, modules: dict[str, nn.Module]) -> dict:
    """Each block's pooled output for all of `data` in one forward, pooled by hand (not with skipcollapse code)."""
    out: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(
            lambda m, a, o, name=name: out.__setitem__(name, o[0] if isinstance(o, tuple) else o)
        )
        for name, module in modules.items()
    ]
    pixels, _ = stack(data)
    with torch.no_grad():
        model(pixel_values=pixels) if family == "hf-vit" else model(pixels)
        for hook in hooks:
            hook.remove()
        if family == "hf-vit":  # the CLS token after the model's final LayerNorm
            return {name: model.vit.layernorm(h[:, 0]) for name, h in out.items()}
        return {name: h.mean(dim=(2, 3)) for name, h in out.items()}  # global average of the maps


def assert_close(got: float, want: float, rel: float = 1e-6) -> None:
    assert math.isfinite(want)
    assert abs(got - want) <= rel * max(1.0, abs(want)), (got, want)


@pytest.mark.parametrize("family,num_blocks", [("hf-vit", 4), ("timm-resnet", 4)])
def test_probe_equals_direct_computation_per_block(family: str, num_blocks: int) -> None:
    model = build(family)
    data = vit_dataset() if family == "hf-vit" else resnet_dataset()
    report = probe_layers(model, data, K, batch_size=16, scores=True, progress=False)  # 3 batches, streamed

    blocks = discover(model).blocks
    assert [r.name for r in report.layers] == blocks and len(blocks) == num_blocks
    assert [r.index for r in report.layers] == list(range(num_blocks))
    direct = direct_block_features(model, family, data, {b: model.get_submodule(b) for b in blocks})
    _, labels = stack(data)
    for row in report.layers:
        z = direct[row.name]
        want = collapse_metrics(z, labels, K)
        assert row.width == z.shape[1] and row.num_examples == N
        for key in ("nc1", "cdnv", "nc2_equinorm", "nc2_etf_distance"):
            assert_close(getattr(row, key), want[key])
        assert_close(row.h_score, h_score(z, labels))
        assert_close(row.logme, logme(z, labels))
    # the blocks really differ: a probe that measured one block N times would fail above, but make it explicit
    assert len({round(r.nc1, 6) for r in report.layers}) == num_blocks


def test_one_forward_per_batch() -> None:
    model = build("hf-vit")
    calls = Counter()
    handles = [model.register_forward_pre_hook(lambda m, a: calls.update(["model"]))]
    for name in discover(model).blocks:
        handles.append(model.get_submodule(name).register_forward_pre_hook(lambda m, a, n=name: calls.update([n])))
    probe_layers(model, vit_dataset(), K, batch_size=16, progress=False)
    for handle in handles:
        handle.remove()
    # ceil(48 / 16) batches, plus one forward of a 2-example batch that measures how the model pools its tokens
    assert calls["model"] == 3 + 1
    assert all(calls[name] == 3 + 1 for name in discover(model).blocks)


def test_loader_and_dataset_give_the_same_report_and_max_examples_caps() -> None:
    model, data = build("hf-vit"), vit_dataset()
    from_dataset = probe_layers(model, data, K, batch_size=16, progress=False)
    from_loader = probe_layers(model, DataLoader(data, batch_size=10), K, progress=False)
    for a, b in zip(from_dataset.layers, from_loader.layers):  # other batch sizes: float32 forward round-off
        assert_close(a.nc1, b.nc1, rel=1e-5)
    capped = probe_layers(model, data, K, batch_size=16, max_examples=20, progress=False)
    assert {r.num_examples for r in capped.layers} == {20}
    assert capped.layers[0].nc1 != from_dataset.layers[0].nc1
    again = probe_layers(model, data, K, batch_size=7, max_examples=20, progress=False)  # same seeded subset
    for a, b in zip(again.layers, capped.layers):
        assert_close(a.nc1, b.nc1, rel=1e-5)
    loader_capped = probe_layers(model, DataLoader(data, batch_size=16), K, max_examples=20, progress=False)
    assert {r.num_examples for r in loader_capped.layers} == {20}  # the second batch is cut at 4


def test_probe_through_a_skipcollapse_peft_model() -> None:
    data = vit_dataset()
    plain = probe_layers(build("hf-vit"), data, K, batch_size=16, progress=False)
    peft_model = get_peft_model(build("hf-vit"), SkipCollapseConfig(source_layer=1))
    source = peft_model.get_base_model().get_submodule(plain.layers[1].name)
    assert isinstance(source, SkipSourceLayer)

    calls = Counter()
    handle = peft_model.register_forward_pre_hook(lambda m, a: calls.update(["model"]))
    at_init = probe_layers(peft_model, data, K, batch_size=16, progress=False)
    handle.remove()
    assert calls["model"] == 3
    assert [r.name for r in at_init.layers] == [r.name for r in plain.layers]
    for a, b in zip(at_init.layers, plain.layers):  # the adapter starts as an exact copy of the base
        assert_close(a.nc1, b.nc1, rel=1e-9)

    with torch.no_grad():  # move the adapter's trainable copy of block 1: the probe must see the copy's output
        g = torch.Generator().manual_seed(3)
        for p in source.skipcollapse_block["default"].parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    moved = probe_layers(peft_model, data, K, batch_size=16, progress=False)
    assert_close(moved.layers[0].nc1, plain.layers[0].nc1, rel=1e-9)
    assert abs(moved.layers[1].nc1 - plain.layers[1].nc1) > 1e-3
    pixels, labels = stack(data)
    base = peft_model.get_base_model()
    captured = {}
    hook = source.skipcollapse_block["default"].register_forward_hook(
        lambda m, a, o: captured.update(h=o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        peft_model(pixel_values=pixels)
        want = collapse_metrics(base.vit.layernorm(captured["h"][:, 0]), labels, K)["nc1"]
    hook.remove()
    assert_close(moved.layers[1].nc1, want)


def test_replace_fusion_probes_up_to_the_source_block() -> None:
    data = vit_dataset()
    plain = probe_layers(build("hf-vit"), data, K, batch_size=16, progress=False)
    model = get_peft_model(build("hf-vit"), SkipCollapseConfig(source_layer=1, fusion="replace"))
    report = probe_layers(model, data, K, batch_size=16, progress=False)
    assert [r.num_examples for r in report.layers] == [N, N, 0, 0]  # blocks after the source do not run
    assert_close(report.layers[1].nc1, plain.layers[1].nc1, rel=1e-9)
    assert all(math.isnan(r.nc1) for r in report.layers[2:])
    assert report.recommended.index in (0, 1) and len(report.notes) == 2


def rows(*nc1: float) -> list[LayerRow]:
    return [LayerRow(index=i, name=f"b{i}", width=8, num_examples=10, nc1=v) for i, v in enumerate(nc1)]


def test_recommendation_rule() -> None:
    assert recommend_layer(rows(3.0, 1.0, 2.0, 0.5)).index == 1  # the last block never, even when lowest
    assert recommend_layer(rows(2.0, 1.0, 1.0, 5.0)).index == 2  # ties go to the later block
    assert recommend_layer(rows(math.nan, 4.0, math.nan, 1.0)).index == 1  # NaN blocks are skipped
    assert recommend_layer(rows(0.7)).index == 0  # a single block is its own recommendation
    assert recommend_layer(rows(math.nan, 1.0)) is None
    # a probed subset: only the model's real last block is excluded
    assert recommend_layer(rows(3.0, 1.0, 0.5), last_block="b9").index == 2
    # on a real probe the rule is: argmin of NC1 over all blocks but the last
    report = probe_layers(build("hf-vit"), vit_dataset(), K, batch_size=16, progress=False)
    candidates = report.layers[:-1]
    assert report.recommended.name == min(candidates, key=lambda r: r.nc1).name


def test_report_files_and_table(tmp_path: Path) -> None:
    report = probe_layers(build("timm-resnet"), resnet_dataset(), K, batch_size=16, scores=True, progress=False)
    csv_lines = report.to_csv(tmp_path / "p.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("index,name,width,num_examples,nc1,cdnv")
    assert len(csv_lines) == 1 + 4 and sum(line.endswith(",True") for line in csv_lines) == 1
    payload = json.loads(report.to_json(tmp_path / "p.json").read_text())
    assert payload["recommended"] == {"name": report.recommended.name, "index": report.recommended.index}
    assert [layer["name"] for layer in payload["layers"]] == [r.name for r in report.layers]
    png = report.plot(tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = str(report)
    assert all(r.name in table for r in report.layers) and "h_score" in table
    assert f"recommended SCL-FT source block: {report.recommended.name}" in table

    # non-finite metrics become null: the JSON stays strict
    broken = LayerReport(rows(1.0, math.nan, 2.0), num_classes=K, pooling="avg")
    text = broken.to_json(tmp_path / "b.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert json.loads(text)["layers"][1]["nc1"] is None


def head_inputs(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    captured = {}
    hook = model.classifier.register_forward_pre_hook(lambda m, a: captured.update(z=a[0]))
    with torch.no_grad():
        model(pixel_values=pixels)
    hook.remove()
    return captured["z"]


def test_rank_backbones_against_direct_scores() -> None:
    data = vit_dataset()
    models = {f"vit-seed{s}": build("hf-vit", seed=s) for s in range(3)}
    accuracies = {"vit-seed0": 0.5, "vit-seed1": 0.7, "vit-seed2": 0.6}
    ranked = rank_backbones(models, data, K, batch_size=16, accuracies=accuracies, progress=False)
    pixels, labels = stack(data)
    direct = {}
    for name, model in models.items():
        z = head_inputs(model, pixels)
        direct[name] = {**collapse_metrics(z, labels, K), "h_score": h_score(z, labels), "logme": logme(z, labels)}
    assert [r["nc1"] for r in ranked] == sorted(r["nc1"] for r in ranked)
    assert [r["rank_nc1"] for r in ranked] == [1, 2, 3]
    for row in ranked:
        want = direct[row["name"]]
        assert row["width"] == 32 and row["num_examples"] == N
        for key in ("nc1", "cdnv", "h_score", "logme"):
            assert_close(row[key], want[key])
        for key, higher in (("cdnv", False), ("h_score", True), ("logme", True)):
            order = sorted(direct, key=lambda n: -direct[n][key] if higher else direct[n][key])
            assert row[f"rank_{key}"] == order.index(row["name"]) + 1
        assert row["rank_accuracy"] == {"vit-seed1": 1, "vit-seed2": 2, "vit-seed0": 3}[row["name"]]
    correlations = score_correlations(ranked, accuracies)
    nc1_scores = {n: d["nc1"] for n, d in direct.items()}
    assert correlations["nc1"] == pytest.approx(rank_correlation(nc1_scores, accuracies, lower_is_better=True))


def test_rank_backbones_with_per_backbone_data() -> None:
    models = {"a": build("hf-vit", seed=0), "b": build("hf-vit", seed=0)}
    data = {"a": vit_dataset(seed=0), "b": vit_dataset(seed=1)}
    by_mapping = {r["name"]: r for r in rank_backbones(models, data, K, progress=False)}
    by_callable = {r["name"]: r for r in rank_backbones(models, lambda name, model: data[name], K, progress=False)}
    assert by_mapping["a"]["nc1"] != by_mapping["b"]["nc1"]  # same model, different data
    assert by_mapping["a"]["nc1"] == pytest.approx(by_callable["a"]["nc1"], rel=1e-12)


def test_rank_correlation() -> None:
    from scipy.stats import kendalltau

    assert rank_correlation([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], lower_is_better=True) == pytest.approx(-1.0)
    scores, accs = [1.0, 2.0, 2.0, 3.0, 5.0, 4.0], [0.3, 0.1, 0.4, 0.4, 0.9, 0.5]  # ties on both sides
    assert rank_correlation(scores, accs) == pytest.approx(kendalltau(scores, accs).statistic, abs=1e-12)
    assert rank_correlation({"a": 1, "b": 2, "c": 3, "x": 0}, {"c": 0.9, "b": 0.5, "a": 0.6}) == pytest.approx(1 / 3)
    assert math.isnan(rank_correlation([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        rank_correlation([1, 2], [1, 2, 3])


def test_probe_needs_blocks_or_names() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 4))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(3, 2, 2, generator=g), i % 2) for i in range(20)]
    with pytest.raises(ValueError, match="layers="):
        probe_layers(model, data, 2, progress=False)
    report = probe_layers(model, data, 2, layers=["1", "3"], progress=False)
    assert [(r.name, r.index, r.width) for r in report.layers] == [("1", 0, 6), ("3", 1, 4)]
    with pytest.raises(ValueError, match="no module 'blocks.9'"):
        probe_layers(model, data, 2, layers=["blocks.9"], progress=False)


# ------------------------------------------------------------------------------------------- distributed
DIST_N = 41  # odd: the two shards are uneven


@pytest.mark.slow  # two fresh processes import torch, transformers and timm: ~30 s on 2 CPU cores
def test_two_processes_give_the_single_process_report(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    single = probe_layers(build("hf-vit"), vit_dataset(DIST_N), K, batch_size=8, scores=True, progress=False)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        # its shard, plus the 2-example batch that measures how the model pools its tokens (adapter.measure)
        assert got["local_examples"] == [21, 20][rank] + 2
        for row, want in zip(got["layers"], single.layers):
            assert row["name"] == want.name and row["num_examples"] == DIST_N
            for key in ("nc1", "cdnv", "h_score", "logme"):
                assert_close(row[key], getattr(want, key), rel=1e-5)


def _distributed_worker(out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build("hf-vit")
    local = Counter()
    model.register_forward_pre_hook(lambda m, a, kw: local.update(n=len(kw["pixel_values"])), with_kwargs=True)
    report = probe_layers(model, vit_dataset(DIST_N), K, batch_size=8, scores=True, progress=False)
    (out / f"rank{rank}.json").write_text(json.dumps({"local_examples": local["n"], "layers": report.to_rows()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    _distributed_worker(Path(sys.argv[1]))
