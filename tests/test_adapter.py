"""The SkipCollapse adapter on a tiny model of every supported family: init, training, save/load, counts."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import BUILDERS, build, logits_of, loss_of, make_inputs
from torch import nn

import skipcollapse
from skipcollapse import SkipCollapseConfig

FAMILIES = list(BUILDERS)


def _adapted(family: str, **config) -> PeftModel:
    return get_peft_model(build(family), SkipCollapseConfig(**config))


def _train_steps(model: nn.Module, family: str, steps: int = 3, lr: float = 1e-2) -> None:
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    inputs = make_inputs(family)
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model, inputs).backward()
        opt.step()
    model.eval()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fusion", ["add", "concat"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_base_at_init(family: str, fusion: str) -> None:
    inputs = make_inputs(family)
    with torch.no_grad():
        expected = logits_of(build(family), inputs)
        model = _adapted(family, fusion=fusion).eval()
        with skipcollapse.HeadInputs(model) as capture:
            got = logits_of(model, inputs)
            assert capture.latest.shape[0] == inputs["labels"].shape[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 if fusion == "concat" else 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_changes_only_the_adapter(family: str) -> None:
    model = _adapted(family)
    before = _snapshot(model)
    _train_steps(model, family)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapter_keys = {k for k in before if ".skipcollapse_" in k or ".modules_to_save." in k}
    assert changed, "nothing trained"
    assert changed <= adapter_keys, f"base weights or statistics changed: {sorted(changed - adapter_keys)[:5]}"
    # the gate opened and the head and the copied source block moved
    assert any(".skipcollapse_gate." in k for k in changed)
    assert any(".skipcollapse_head_copy." in k for k in changed)
    assert any(".skipcollapse_block." in k for k in changed)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_onto_fresh_base(family: str, tmp_path) -> None:
    model = _adapted(family)
    _train_steps(model, family)
    inputs = make_inputs(family, seed=5)
    with torch.no_grad():
        expected = logits_of(model, inputs)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "SKIPCOLLAPSE"
    assert saved["source_layer"] == model.peft_config["default"].source_layer

    reloaded = PeftModel.from_pretrained(build(family), tmp_path).eval()
    assert isinstance(reloaded.peft_config["default"], SkipCollapseConfig)
    with torch.no_grad():
        got = logits_of(reloaded, inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("fusion", ["add", "replace"])
def test_an_adapter_saved_with_the_skip_path_under_block_l_loads_whole(fusion: str, tmp_path) -> None:
    """skipcollapse 0.1.0 saved the projection and gate under block ℓ; they live under the head now, and such files
    load whole (not with a closed gate and a fresh projection, which peft would only warn about)."""
    from safetensors.torch import load_file, save_file

    model = _adapted("hf-resnet", fusion=fusion)  # a linear projection (24 -> 32 features)
    _train_steps(model, "hf-resnet")
    inputs = make_inputs("hf-resnet", seed=5)
    with torch.no_grad():
        expected = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    config = model.peft_config["default"]
    path = tmp_path / "adapter_model.safetensors"
    moved = {
        k.replace(f"{config.head_module}.skipcollapse_", f"{config.source_layer}.skipcollapse_")
        if ".skipcollapse_proj." in k or ".skipcollapse_gate." in k
        else k: v
        for k, v in load_file(path).items()
    }
    assert sum(f"{config.source_layer}.skipcollapse_proj." in k for k in moved) == 2  # weight and bias, old place
    if fusion == "add":  # the earliest files stored the gate as a bare parameter under the block
        gate = next(k for k in moved if ".skipcollapse_gate." in k)
        moved[gate.removesuffix(".weight")] = moved.pop(gate)
    save_file(moved, path)
    reloaded = PeftModel.from_pretrained(build("hf-resnet"), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(reloaded, inputs), expected, rtol=0, atol=0)


def _numel(module: nn.Module, only=lambda name: True) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if only(n))


@pytest.mark.parametrize("train_source", ["full", "norms_biases", "none"])
@pytest.mark.parametrize("family", ["hf-vit", "hf-resnet", "hf-roberta", "timm-efficientnet"])
def test_trainable_parameter_count_matches_config(family: str, train_source: str) -> None:
    base = build(family)
    model = get_peft_model(base, SkipCollapseConfig(train_source=train_source, fusion="concat"))
    config = model.peft_config["default"]
    fresh = build(family)
    block, head = fresh.get_submodule(config.source_layer), fresh.get_submodule(config.head_module)

    def is_norm_or_bias(name: str) -> bool:
        owner = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
        norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
        return name.endswith("bias") or isinstance(owner, norm_types) or "norm" in type(owner).__name__.lower()

    expected_block = {"full": _numel(block), "norms_biases": _numel(block, is_norm_or_bias), "none": 0}[train_source]
    skip_width = config.source_dim  # concat with identity projection: the head grows by the skip's width
    expected_head = (head.in_features + skip_width) * head.out_features + head.out_features
    extra = sum(_numel(fresh.get_submodule(name)) for name in config.modules_to_save)
    expected = expected_block + expected_head + 1 + extra  # + the gate
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == expected
    assert trainable < 0.9 * _numel(fresh)


def test_linear_projection_counts_and_trains() -> None:
    model = _adapted("hf-resnet")
    config = model.peft_config["default"]
    assert config.projection == "linear" and config.source_dim == 24
    proj = model.get_base_model().get_submodule(config.head_module).skipcollapse_proj["default"]
    assert isinstance(proj, nn.Linear) and proj.in_features == 24 and proj.out_features == 32
    before = proj.weight.detach().clone()
    _train_steps(model, "hf-resnet")
    assert not torch.equal(before, proj.weight)


def test_norms_biases_trains_only_norms_and_biases() -> None:
    model = _adapted("hf-bert", train_source="norms_biases")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and ".skipcollapse_block." in n]
    assert trainable and all(n.endswith("bias") or "LayerNorm" in n for n in trainable)


@pytest.mark.parametrize("family", ["hf-bert", "timm-resnet"])
def test_replace_fusion_does_not_run_later_blocks(family: str) -> None:
    model = _adapted(family, fusion="replace", source_layer=1)
    blocks = skipcollapse.block_names(model.get_base_model())
    calls = []
    for name in blocks[2:]:
        block = model.get_base_model().get_submodule(name)  # the block itself, inside its bypass wrapper
        block.get_base_layer().register_forward_hook(lambda *a, n=name: calls.append(n))
    inputs = make_inputs(family)
    loss = loss_of(model, inputs)
    loss.backward()
    assert calls == []
    with model.disable_adapter():
        logits_of(model, inputs)
    assert len(calls) == len(blocks) - 2  # the base model does run them


def test_replace_returns_model_output_with_loss_and_tuple_mode() -> None:
    model = _adapted("hf-vit", fusion="replace")
    inputs = make_inputs("hf-vit")
    out = model(**inputs)
    assert out.loss is not None and out.logits.shape == (6, 3)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, inputs["labels"]))
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], out.logits)


@pytest.mark.parametrize("family", ["hf-resnet", "timm-efficientnet"])
def test_frozen_batchnorm_statistics_do_not_drift_and_tuned_ones_round_trip(family: str, tmp_path) -> None:
    model = _adapted(family)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    _train_steps(model, family)
    after = model.state_dict()
    drifted = {k for k in stats if not torch.equal(stats[k], after[k])}
    assert drifted, "the tuned block's BatchNorm statistics should update in train mode"
    assert all(".skipcollapse_block." in k for k in drifted), sorted(drifted)

    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build(family), tmp_path).state_dict()
    for key in drifted:
        assert torch.equal(reloaded[key], after[key]), key


def test_disable_adapter_gives_base_logits_after_training() -> None:
    inputs = make_inputs("hf-bert")
    with torch.no_grad():
        expected = logits_of(build("hf-bert"), inputs)
    model = _adapted("hf-bert")
    _train_steps(model, "hf-bert")
    with torch.no_grad():
        assert not torch.allclose(logits_of(model, inputs), expected)
        with model.disable_adapter():
            torch.testing.assert_close(logits_of(model, inputs), expected, rtol=0, atol=0)


def test_unload_returns_the_base_model() -> None:
    inputs = make_inputs("timm-vit")
    with torch.no_grad():
        expected = logits_of(build("timm-vit"), inputs)
    model = _adapted("timm-vit", fusion="replace")
    _train_steps(model, "timm-vit")
    base = model.unload()
    assert not any("skipcollapse" in n for n, _ in base.named_modules())
    assert "forward" not in vars(base)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(base, inputs), expected, rtol=0, atol=0)


def test_merge_and_unload_explains_why_not_and_points_to_unload() -> None:
    model = _adapted("hf-bert")
    with pytest.raises(ValueError, match=r"unload\(\)"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="depends on each input"):
        model.merge_adapter()


def test_two_adapters_with_different_sources(tmp_path) -> None:
    inputs = make_inputs("hf-bert")
    model = _adapted("hf-bert", source_layer=1)
    model.add_adapter("late", SkipCollapseConfig(source_layer=-1, fusion="concat"))
    assert model.active_adapters == ["default"]
    _train_steps(model, "hf-bert")
    with torch.no_grad():
        default_logits = logits_of(model, inputs)
    model.set_adapter("late")
    _train_steps(model, "hf-bert")
    with torch.no_grad():
        late_logits = logits_of(model, inputs)
        model.set_adapter("default")
        torch.testing.assert_close(logits_of(model, inputs), default_logits, rtol=0, atol=0)
    assert not torch.allclose(default_logits, late_logits)

    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build("hf-bert"), tmp_path / "late", adapter_name="late").eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(reloaded, inputs), late_logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one adapter at a time"):
        model.base_model.set_adapter(["default", "late"])


def test_loading_into_a_new_adapter_name_maps_nested_block_keys(tmp_path) -> None:
    model = _adapted("hf-vit")
    _train_steps(model, "hf-vit")
    model.save_pretrained(tmp_path)
    inputs = make_inputs("hf-vit")
    with torch.no_grad():
        expected = logits_of(model, inputs)
    other = get_peft_model(build("hf-vit"), SkipCollapseConfig(source_layer=0))
    other.load_adapter(tmp_path, adapter_name="trained")
    other.set_adapter("trained")
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(other, inputs), expected, rtol=0, atol=0)


def test_seq_cls_task_type_keeps_the_skip_path() -> None:
    inputs = make_inputs("hf-roberta")
    with torch.no_grad():
        expected = logits_of(build("hf-roberta"), inputs)
    model = get_peft_model(build("hf-roberta"), SkipCollapseConfig(task_type="SEQ_CLS"))
    config = model.peft_config["default"]
    assert "classifier" not in config.modules_to_save and "classifier.dense" in config.modules_to_save
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(model, inputs), expected, rtol=0, atol=0)
    _train_steps(model, "hf-roberta")
    dense = model.get_base_model().classifier.dense
    assert not torch.equal(dense.modules_to_save["default"].weight, dense.original_module.weight)


def test_head_inputs_capture_the_fused_features_only_while_asked() -> None:
    model = _adapted("hf-bert", fusion="concat")
    with skipcollapse.HeadInputs(model) as capture:
        logits = logits_of(model, make_inputs("hf-bert"))
        z = capture.latest
    assert z.shape == (6, 64) and z.requires_grad  # concat: h_L (32) and the skip (32)
    head = model.get_base_model().classifier.skipcollapse_head_copy["default"]
    torch.testing.assert_close(logits, head(z))
    assert not head._forward_pre_hooks  # the capture leaves nothing behind, so no graph outlives the step
    with pytest.raises(RuntimeError, match="no forward pass"):
        capture.latest


def test_replace_on_a_wrapped_timm_model_returns_the_loss_for_the_trainer() -> None:
    model = get_peft_model(
        skipcollapse.TimmImageClassifier(build("timm-efficientnet")), SkipCollapseConfig(fusion="replace")
    )
    pixels = make_inputs("timm-efficientnet")["x"]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(pixel_values=pixels, labels=labels)
    assert out.loss is not None
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, labels))
