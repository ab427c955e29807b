"""The paths users take besides a plain forward: DataParallel replicas in threads, torch.compile, bf16/fp16 bases,
accelerate's offload hooks, several adapters, and peft's generic operations."""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import build, logits_of, loss_of, make_inputs
from torch import nn

import skipcollapse
from skipcollapse import SkipCollapseConfig
from skipcollapse.adapter.layer import SkipBypassLayer, SkipCollapseLayer


def _adapted(family: str, seed: int = 0, **config) -> PeftModel:
    model = build(family)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, SkipCollapseConfig(**config))
    _open_gates(peft_model)
    return peft_model.eval()


def _open_gates(model: nn.Module, value: float = 0.7) -> None:
    """Gates start at zero (the base model's output); open them so the skip matters in these comparisons."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "skipcollapse_gate" in name:
                p.fill_(value)


def _replicas(model: nn.Module, count: int = 2, own_parameters: bool = False) -> list[nn.Module]:
    """Replicas built the way `nn.DataParallel` builds them: a shallow copy of every module, sharing parameters (or,
    as on several GPUs, each with its own copy of them)."""
    modules = list(model.modules())
    index = {id(m): i for i, m in enumerate(modules)}
    roots = []
    for _ in range(count):
        copies = [m._replicate_for_data_parallel() for m in modules]
        for original, replica in zip(modules, copies):
            for key, child in original._modules.items():
                replica._modules[key] = None if child is None else copies[index[id(child)]]
            for key, param in original._parameters.items():
                if own_parameters and param is not None:
                    param = nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
                replica._parameters[key] = param
        roots.append(copies[0])
    return roots


@pytest.mark.parametrize("fusion", ["add", "concat", "replace"])
@pytest.mark.parametrize("family", ["timm-resnet", "hf-bert"])
def test_data_parallel_replicas_in_threads_give_the_models_logits(family: str, fusion: str) -> None:
    model = _adapted(family, fusion=fusion)
    inputs = [make_inputs(family, seed=s) for s in (1, 2)]
    with torch.no_grad():
        expected = [logits_of(model, x) for x in inputs]
    replicas = _replicas(model)
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            start.wait()
            with torch.no_grad():
                for _ in range(10):
                    results[i].append(logits_of(replicas[i], inputs[i]))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in (0, 1):
        for got in results[i]:
            torch.testing.assert_close(got, expected[i], rtol=0, atol=0)


def test_the_scope_reaches_the_layers_by_name_and_walks_the_model_when_a_name_is_gone() -> None:
    from skipcollapse.adapter.layer import _scoped_layers

    model = _adapted("hf-bert", fusion="replace")
    base, names = model.get_base_model(), model.base_model._scoped_names
    walked = _scoped_layers(base)
    assert len(walked) > 2 and _scoped_layers(base, names) == walked  # source, bypassed modules, head
    assert _scoped_layers(base, [*names, "no.such.module"]) == walked  # a stale name: the model is walked instead
    model.add_adapter("other", SkipCollapseConfig(source_layer=0, fusion="add"))
    assert _scoped_layers(base, names) == _scoped_layers(base)  # updated in place for the hooks


class _Wrapper(nn.Module):
    """What activation-checkpointing or compile wrappers do: a module put in a layer's place, calling it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_a_wrapper_put_in_the_source_blocks_place_keeps_the_scope() -> None:
    model = _adapted("timm-efficientnet", fusion="add")
    inputs = make_inputs("timm-efficientnet")
    with torch.no_grad():
        expected = logits_of(model, inputs)
        parent, _, index = model.peft_config["default"].source_layer.rpartition(".")
        stage = model.get_base_model().get_submodule(parent)
        stage[int(index)] = _Wrapper(stage[int(index)])
        torch.testing.assert_close(logits_of(model, inputs), expected, rtol=0, atol=0)


def test_head_inputs_of_data_parallel_replicas_are_refused_with_the_way_out() -> None:
    """Replicas split a batch's z between threads; the capture says so instead of handing one replica's rows to a
    loss that has the labels of the whole batch."""
    model = _adapted("hf-bert")
    inputs = make_inputs("hf-bert")
    with skipcollapse.HeadInputs(model) as capture, torch.no_grad():
        logits_of(model, inputs)
        assert capture.latest.shape[0] == inputs["labels"].shape[0]
        logits_of(_replicas(model, count=1)[0], inputs)
        with pytest.raises(RuntimeError, match=r"(?s)DataParallel.*accelerate launch"):
            capture.latest


@pytest.mark.parametrize("fusion", ["add", "replace"])
def test_a_replica_uses_its_own_copy_of_the_skip_norm(fusion: str) -> None:
    """On several GPUs each DataParallel replica holds its own copy of every weight; the skip's norm (ViT's final
    norm) must be the replica's own, as every other module the replica runs."""
    model = _adapted("hf-vit", fusion=fusion)
    inputs = make_inputs("hf-vit")
    replica = _replicas(model, count=1, own_parameters=True)[0]
    norm = "base_model.model." + model.peft_config["default"].skip_norm
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for changed in (replica, twin):
            changed.get_submodule(norm).weight.mul_(3.0)  # the replica's weight only, not the original's
        torch.testing.assert_close(logits_of(replica, inputs), logits_of(twin, inputs), rtol=0, atol=1e-6)
        assert not torch.allclose(logits_of(replica, inputs), logits_of(model, inputs))


@pytest.mark.parametrize("fusion", ["add", "concat", "replace"])
@pytest.mark.parametrize("family", ["timm-resnet", "hf-vit"])
def test_compile_fullgraph_gives_the_same_logits_and_gradients(family: str, fusion: str) -> None:
    torch._dynamo.reset()
    model = _adapted(family, fusion=fusion)
    inputs = make_inputs(family)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for run in (model, compiled):
        run.zero_grad()
        loss_of(run, inputs).backward()
        if run is model:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
            logits = logits_of(model, inputs)
    torch.testing.assert_close(logits_of(compiled, inputs), logits, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_capture_opened_after_the_model_was_compiled_and_run_sees_the_next_forward() -> None:
    """HeadInputs also hooks the model root (for the input ids a per-token head is read at), and torch.compile guards
    on the root's hooks: the graph is rebuilt with the capture's hooks in it."""
    torch._dynamo.reset()
    model = _adapted("hf-vit")
    inputs = make_inputs("hf-vit")
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        logits_of(compiled, inputs)  # compiled before the capture's hooks existed
        with skipcollapse.HeadInputs(compiled) as capture:
            logits_of(compiled, inputs)
            assert capture.latest.shape[0] == inputs["labels"].shape[0]


@pytest.mark.slow  # inductor compiles C++ kernels: ~10 s per model on these machines
@pytest.mark.parametrize("fusion", ["add", "replace"])
def test_compile_with_inductor_gives_the_same_logits_and_gradients(fusion: str) -> None:
    torch._dynamo.reset()
    model = _adapted("hf-bert", fusion=fusion)
    inputs = make_inputs("hf-bert")
    compiled = torch.compile(model)  # the default backend, as TrainingArguments(torch_compile=True) uses
    for run in (model, compiled):
        run.zero_grad()
        loss_of(run, inputs).backward()
        if run is model:
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        torch.testing.assert_close(logits_of(compiled, inputs), logits_of(model, inputs), rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("fusion", ["add", "concat", "replace"])
@pytest.mark.parametrize("family", ["hf-bert", "timm-efficientnet"])
def test_gradient_checkpointing_recomputes_the_block_copy_and_keeps_the_gradients(family: str, fusion: str) -> None:
    """Activation checkpointing (transformers' gradient_checkpointing_enable, which TrainingArguments(
    gradient_checkpointing=True) calls, and timm's set_grad_checkpointing) replays the adapter's copy of block ℓ in
    the backward pass, outside the forward call's scope: the gradients stay those of the plain run."""
    grads = []
    for checkpointing in (False, True):
        model = build(family)
        if checkpointing and family.startswith("hf-"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif checkpointing:
            model.set_grad_checkpointing(True)
        torch.manual_seed(0)
        model = get_peft_model(model, SkipCollapseConfig(fusion=fusion))
        _open_gates(model)
        copy = model.get_base_model().get_submodule(model.peft_config["default"].source_layer).skipcollapse_block
        inner = next(m for m in copy["default"].modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
        runs = []
        inner.register_forward_hook(lambda *args: runs.append(1))
        torch.manual_seed(1)  # the same dropout masks in both runs (checkpointing replays the RNG state)
        loss_of(model.train(), make_inputs(family)).backward()
        assert len(runs) == (2 if checkpointing else 1)  # forward, and (checkpointed) its replay in backward
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(g is not None for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["timm-resnet", "hf-bert", "hf-vit"])
def test_half_precision_bases_forward_train_and_reload(family: str, dtype: torch.dtype, tmp_path) -> None:
    base = build(family).to(dtype)
    model = get_peft_model(base, SkipCollapseConfig(fusion="concat"))
    _open_gates(model)
    inputs = make_inputs(family)
    half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with torch.autocast("cpu", dtype=dtype):
        loss = loss_of(model, half)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        logits = logits_of(model, half)
    assert torch.isfinite(logits).all()
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build(family).to(dtype), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(reloaded, half), logits)


@pytest.mark.parametrize("fusion", ["add", "replace"])
def test_accelerate_offload_hooks_keep_the_logits(fusion: str) -> None:
    from accelerate import cpu_offload, dispatch_model

    inputs = make_inputs("hf-bert")
    model = _adapted("hf-bert", fusion=fusion)
    with torch.no_grad():
        expected = logits_of(model, inputs)
    dispatched = dispatch_model(_adapted("hf-bert", fusion=fusion), device_map={"": "cpu"})
    offloaded = cpu_offload(_adapted("hf-bert", fusion=fusion), execution_device=torch.device("cpu"))
    with torch.no_grad():
        for other in (dispatched, offloaded):
            torch.testing.assert_close(logits_of(other, inputs), expected, rtol=0, atol=1e-6)


def test_two_adapters_with_different_source_blocks_switch_like_single_ones() -> None:
    family, inputs = "timm-efficientnet", make_inputs("timm-efficientnet")
    first = dict(source_layer=1, fusion="add")
    second = dict(source_layer=-3, fusion="replace")
    single_a, single_b = _adapted(family, seed=0, **first), _adapted(family, seed=1, **second)
    both = _adapted(family, seed=0, **first)
    torch.manual_seed(1)
    both.add_adapter("other", SkipCollapseConfig(**second))
    with torch.no_grad():
        torch.testing.assert_close(logits_of(both, inputs), logits_of(single_a, inputs), rtol=0, atol=0)
        both.set_adapter("other")
        torch.testing.assert_close(logits_of(both, inputs), logits_of(single_b, inputs), rtol=0, atol=0)
        both.set_adapter("default")
        torch.testing.assert_close(logits_of(both, inputs), logits_of(single_a, inputs), rtol=0, atol=0)
    both.delete_adapter("other")
    for module in both.modules():
        if isinstance(module, SkipCollapseLayer):
            assert "other" not in module.fusion and "other" not in getattr(module, "_skip_norms", {})
    with torch.no_grad():
        torch.testing.assert_close(logits_of(both, inputs), logits_of(single_a, inputs), rtol=0, atol=0)


def test_peft_set_requires_grad_keeps_norms_biases_training_only_norms_and_biases() -> None:
    model = get_peft_model(build("hf-vit"), SkipCollapseConfig(train_source="norms_biases"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.base_model.set_requires_grad("default", requires_grad=True)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    block_params = [n for n in trainable if "skipcollapse_block" in n]
    assert block_params and all("norm" in n or n.endswith("bias") for n in block_params)


@pytest.mark.parametrize("family,extra", [("hf-distilbert", "pre_classifier"), ("hf-roberta", "classifier.dense")])
def test_replace_trains_nothing_that_gets_no_gradient(family: str, extra: str) -> None:
    model = get_peft_model(build(family), SkipCollapseConfig(fusion="replace"))
    assert extra not in (model.peft_config["default"].modules_to_save or [])
    model.train()
    loss_of(model, make_inputs(family)).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_the_config_object_is_not_mutated_and_can_be_reused() -> None:
    config = SkipCollapseConfig()
    first = get_peft_model(build("hf-bert"), config)
    assert config.source_layer is None and config.head_module is None and config.base_model_class is None
    second = get_peft_model(build("timm-resnet"), config)  # another family from the same config object
    assert first.peft_config["default"].source_layer.startswith("bert.")
    assert second.peft_config["default"].source_layer.startswith("layer")


def test_merge_and_merge_and_unload_raise_the_same_error_with_advice() -> None:
    model = _adapted("hf-bert")
    with pytest.raises(ValueError, match="unload()") as whole:
        model.merge_and_unload()
    with pytest.raises(ValueError, match="unload()") as layer:
        next(m for m in model.modules() if isinstance(m, SkipCollapseLayer)).merge()
    assert str(whole.value) == str(layer.value)


def test_a_wrapped_block_stays_a_drop_in_for_code_that_reads_its_attributes() -> None:
    model = _adapted("hf-vit", fusion="replace", source_layer=0)
    base = model.get_base_model()
    blocks = skipcollapse.block_names(base)
    source = base.get_submodule(blocks[0])
    assert source.attention is source.base_layer.attention  # read through the wrapper
    bypassed = base.get_submodule(blocks[1])
    assert isinstance(bypassed, SkipBypassLayer) and bypassed.layernorm_before is bypassed.base_layer.layernorm_before
    with pytest.raises(AttributeError, match="no_such_thing"):
        source.no_such_thing


def test_a_swin_stage_as_source_measures_its_width_and_stays_a_drop_in() -> None:
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2, num_labels=3
    )
    pixels = torch.randn(2, 3, 32, 32)
    stage = dict(source_layer="swin.encoder.layers.0", head_module="classifier", pooling="mean")
    model = get_peft_model(SwinForImageClassification(config).eval(), SkipCollapseConfig(**stage))
    assert model.peft_config["default"].source_dim == 32  # 2 x 16 after the stage's patch merging (a guess said 64)
    with model.disable_adapter():  # the model code reads the wrapped stage's attributes (downsample)
        assert model(pixel_values=pixels).logits.shape == (2, 3)
    assert model(pixel_values=pixels).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="source_dim=48, but 'swin.encoder.layers.0'.*gives 32"):
        get_peft_model(SwinForImageClassification(config), SkipCollapseConfig(**stage, source_dim=48))


@pytest.mark.parametrize("family", ["hf-bert", "hf-roberta"])
def test_seq_cls_task_type_trains_saves_and_reloads(family: str, tmp_path) -> None:
    """peft's sequence-classification model adds 'classifier' to the config and wraps what it lists; the head
    (or, for RoBERTa, the classification head around it) must not be wrapped, and the adapter must reload."""
    from peft.utils import ModulesToSaveWrapper

    config = SkipCollapseConfig(task_type="SEQ_CLS")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # peft added 'classifier', not the user: nothing to warn about
        model = get_peft_model(build(family), config)
    head = model.peft_config["default"].head_module
    wrapped = [n for n, m in model.get_base_model().named_modules() if isinstance(m, ModulesToSaveWrapper)]
    assert not any(head == n or head.startswith(n + ".") for n in wrapped), wrapped
    _open_gates(model)
    model.train()
    loss_of(model, make_inputs(family)).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    model.eval()
    inputs = make_inputs(family, seed=5)
    with torch.no_grad():
        expected = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build(family), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_of(reloaded, inputs), expected, rtol=0, atol=0)
    get_peft_model(build(family), config)  # the same config object again


def test_add_weighted_adapter_is_refused_with_the_way_out() -> None:
    model = _adapted("hf-bert")
    model.add_adapter("other", SkipCollapseConfig())
    with pytest.raises(ValueError, match="cannot be combined by weights.*set_adapter"):
        model.add_weighted_adapter(["default", "other"], [0.5, 0.5], "mix")


def test_an_adapter_added_next_to_a_replace_adapter_measures_the_base_block() -> None:
    family = "timm-efficientnet"
    alone = _adapted(family, source_layer=-1, fusion="add")
    both = _adapted(family, source_layer=2, fusion="replace")
    both.add_adapter("late", SkipCollapseConfig(source_layer=-1, fusion="add"))
    assert both.peft_config["late"].source_dim == alone.peft_config["default"].source_dim
    both.set_adapter("late")
    _open_gates(both)
    with torch.no_grad():
        logits_of(both, make_inputs(family))  # a width measured through the other adapter's bypass would fail here


def test_deleting_the_active_adapter_activates_a_remaining_one() -> None:
    family, inputs = "timm-efficientnet", make_inputs("timm-efficientnet")
    single = _adapted(family, seed=0, source_layer=2)
    both = _adapted(family, seed=0, source_layer=2)
    both.add_adapter("other", SkipCollapseConfig(source_layer=1))
    both.set_adapter("other")
    both.delete_adapter("other")
    assert both.active_adapter == "default"
    with torch.no_grad():
        torch.testing.assert_close(logits_of(both, inputs), logits_of(single, inputs), rtol=0, atol=0)


def test_a_frozen_adapter_keeps_its_batchnorm_statistics_in_train_mode(tmp_path) -> None:
    family = "timm-efficientnet"
    _adapted(family).save_pretrained(tmp_path)
    frozen = PeftModel.from_pretrained(build(family), tmp_path, is_trainable=False)
    before = {k: v.clone() for k, v in frozen.state_dict().items() if "running" in k}
    frozen.train()
    with torch.no_grad():
        logits_of(frozen, make_inputs(family))
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in before.items())
    trainable = PeftModel.from_pretrained(build(family), tmp_path, is_trainable=True).train()
    copies = [m for n, m in trainable.named_modules() if ".skipcollapse_block." in n and isinstance(m, nn.BatchNorm2d)]
    assert copies and all(m.training for m in copies)  # a trained copy's statistics do train


def test_a_modules_to_save_entry_around_the_head_is_left_out_with_a_warning() -> None:
    config = SkipCollapseConfig(modules_to_save=["classifier"])
    with pytest.warns(UserWarning, match="'classifier' contains SkipCollapse's source block or head"):
        model = get_peft_model(build("hf-bert"), config)
    assert "classifier" not in model.peft_config["default"].modules_to_save
    assert config.modules_to_save == ["classifier"]  # the user's config object is left as it was


class _InFloat32(nn.Module):
    """A module evaluated in float32, its output rounded to `dtype`: what the adapter's float32 copies compute."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.dtype = copy.deepcopy(module).float(), dtype

    def forward(self, *args, **kwargs):
        from skipcollapse.adapter.layer import _cast

        return _cast(self.module(*_cast(args, torch.float32), **_cast(kwargs, torch.float32)), self.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["hf-resnet", "hf-bert"])
def test_half_precision_base_at_init_is_the_base_with_block_l_in_float32(family: str, dtype: torch.dtype) -> None:
    """What holds at init on a bf16/fp16 base, exactly: peft keeps adapter weights in float32, so the block copy and
    the head copy run in float32; the adapted model then equals the base with block ℓ evaluated in float32 (rounded
    back to the base's dtype) and the head in float32. With autocast_adapter_dtype=False (the copies in the base's
    dtype) it equals the base itself."""
    inputs = make_inputs(family)
    half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    base = build(family).to(dtype).eval()
    with torch.no_grad():
        expected = logits_of(base, half)
    source = get_peft_model(build(family).to(dtype), SkipCollapseConfig()).peft_config["default"].source_layer
    reference = build(family).to(dtype).eval()
    head = skipcollapse.discover(reference).head
    for name, out_dtype in ((source, dtype), (head, torch.float32)):
        parent, _, child = name.rpartition(".")
        owner = reference.get_submodule(parent) if parent else reference
        setattr(owner, child, _InFloat32(reference.get_submodule(name), out_dtype))
    with torch.no_grad():
        float32_block = logits_of(reference, half)
        adapted = get_peft_model(build(family).to(dtype), SkipCollapseConfig()).eval()
        torch.testing.assert_close(logits_of(adapted, half), float32_block, rtol=0, atol=0)
        same_dtype = get_peft_model(build(family).to(dtype), SkipCollapseConfig(), autocast_adapter_dtype=False).eval()
        torch.testing.assert_close(logits_of(same_dtype, half), expected, rtol=0, atol=0)


def test_a_positional_attention_mask_is_used_by_mean_pooling() -> None:
    model = _adapted("hf-bert", pooling="mean")
    _open_gates(model, 1.0)
    model.eval()
    ids = torch.randint(3, 60, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        by_keyword = model(input_ids=ids, attention_mask=mask).logits
        by_position = model(ids, mask).logits
        alone = model(input_ids=ids[1:, :6]).logits
    torch.testing.assert_close(by_position, by_keyword, rtol=0, atol=0)
    torch.testing.assert_close(alone[0], by_keyword[1], rtol=1e-5, atol=1e-6)


def test_an_interrupted_call_leaves_no_scope_behind() -> None:
    """torch runs always_call hooks on Exception only: a KeyboardInterrupt skips the hook that closes the scope."""
    from skipcollapse.adapter.layer import _open_scopes

    model = _adapted("hf-bert")
    inputs = make_inputs("hf-bert")
    source = model.get_base_model().get_submodule(model.peft_config["default"].source_layer)

    def interrupt(module, args, output):
        raise KeyboardInterrupt

    handle = source.register_forward_hook(interrupt)
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            logits_of(model, inputs)
    handle.remove()
    logits_of(model, inputs)
    assert _open_scopes() == []


def test_replace_on_a_model_no_example_batch_can_be_built_for() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    model = get_peft_model(
        base, SkipCollapseConfig(source_layer="0", head_module="4", pooling="flatten", fusion="replace")
    )
    assert model(torch.randn(3, 4)).shape == (3, 2)


def test_a_decoder_without_a_pad_token_is_measured_one_example_at_a_time() -> None:
    from conformance_models import ARCHS_BY_NAME

    base = ARCHS_BY_NAME["gpt2"].build()
    base.config.pad_token_id = None  # as GPT-2 and Llama checkpoints ship
    model = get_peft_model(base, SkipCollapseConfig())
    assert model.peft_config["default"].pooling == "per_token"


def test_creating_the_adapter_under_inference_mode_measures_as_outside_it() -> None:
    plain = build("hf-bert")
    with torch.inference_mode():
        assert get_peft_model(plain, SkipCollapseConfig()).peft_config["default"].pooling == "cls"
