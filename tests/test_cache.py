"""The frozen-prefix cache: training from it computes what training without it computes, and it knows when it is stale.

Equality is checked on tiny models built from configs: logits of `CachedSkipModel` vs the PeftModel on the same
examples, and parameters after the same optimizer steps on the same batches (plain loop and the real Trainer).
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import build, logits_of, loss_of, make_inputs, training_args
from torch import nn
from transformers import Trainer

from skipcollapse import HeadInputs, SkipCollapseConfig
from skipcollapse.cache import CachedSkipModel, PrefixCache, build_prefix_cache
from skipcollapse.integrations.timm import TimmImageClassifier


class Examples(torch.utils.data.Dataset):
    """`make_inputs` as a map-style dataset of dicts (what the Trainer and the cache consume)."""

    def __init__(self, family: str, n: int = 12, seed: int = 3) -> None:
        self.items = make_inputs(family, batch=n, seed=seed)
        if "attention_mask" in self.items:  # padded sequences, so the mask is a real per-example input
            self.items["attention_mask"][::2, -3:] = 0

    def __len__(self) -> int:
        return len(self.items["labels"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.items.items()}


class NoisyExamples(Examples):
    """Random augmentation: every read of an example adds fresh noise."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        item["x"] = item["x"] + 0.01 * torch.randn_like(item["x"])
        return item


class PixelExamples(Examples):
    """Timm inputs under the name `TimmImageClassifier` takes."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        return {"pixel_values": item["x"], "labels": item["labels"]}


def adapted(family: str, *, seed: int = 0, wrap: bool = False, **config) -> PeftModel:
    """The same adapted tiny model for the same seed, its adapter moved off its zero init (an open gate)."""
    model = build(family)
    if wrap:
        model = TimmImageClassifier(model)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, SkipCollapseConfig(**config))
    with torch.no_grad():
        for _name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    return peft_model


def assert_same_and_trained(cached: nn.Module, plain: nn.Module, initial: nn.Module) -> None:
    """Every parameter and buffer of the two trained models agrees, and training moved the adapter."""
    trained, start = cached.state_dict(), initial.state_dict()
    moved = set()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-6, msg=name)
        if not torch.equal(value, start[name]):
            moved.add(name)
    assert any(".skipcollapse_block." in n for n in moved) and any(".skipcollapse_head_copy." in n for n in moved)


def all_indices(dataset) -> torch.Tensor:
    return torch.arange(len(dataset))


# ------------------------------------------------------------------------------------------ forward equality
@pytest.mark.filterwarnings("ignore:modules before")
@pytest.mark.parametrize(
    "family,fusion",
    [(f, fusion) for f in ("timm-efficientnet", "timm-resnet") for fusion in ("replace", "add", "concat")]
    + [(f, fusion) for f in ("hf-vit", "hf-bert", "timm-vit", "hf-resnet") for fusion in ("replace", "add")]
    + [("hf-roberta", "add"), ("hf-distilbert", "concat")],
)
def test_cached_logits_equal_uncached(family: str, fusion: str) -> None:
    model = adapted(family, fusion=fusion).eval()
    data = Examples(family)
    cache = build_prefix_cache(model, data, batch_size=5)
    cached = CachedSkipModel(model, cache).eval()
    with torch.no_grad(), HeadInputs(cached) as capture:
        expected = logits_of(model, data.items)
        out = cached(cache_index=all_indices(data), labels=data.items["labels"])
        features = capture.latest
    atol = 0 if family.startswith("timm-") and family != "timm-vit" else 1e-6
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=atol)
    assert torch.isfinite(out.loss)
    assert features.shape[0] == len(data)  # the collapse tools see the cached model's features


@pytest.mark.filterwarnings("ignore:modules before")  # BERT's embedding dropout: expected, documented
def test_bert_padding_mask_is_cached_per_example() -> None:
    model = adapted("hf-bert", fusion="add").eval()
    cache = build_prefix_cache(model, Examples("hf-bert"), batch_size=5)
    kinds = {slot.where: slot.kind for slot in cache.slots}
    assert kinds[0] == "example" and kinds[1] == "example"  # hidden states and the (padded) attention mask


# ------------------------------------------------------------------------------------------ training equality
@pytest.mark.parametrize("fusion", ["replace", "add"])
@pytest.mark.parametrize("family", ["timm-efficientnet", "timm-resnet"])
def test_optimizer_steps_from_cache_equal_uncached(family: str, fusion: str) -> None:
    data = Examples(family, n=12)
    plain = adapted(family, fusion=fusion)
    cached = CachedSkipModel(adapted(family, fusion=fusion), build_prefix_cache(plain, data, batch_size=5))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).split(4)

    steps = (
        (plain, lambda idx: loss_of(plain, data[idx])),
        (cached, lambda idx: cached(idx, data[idx]["labels"]).loss),
    )
    for model, step in steps:
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for idx in order:  # the block copy's BatchNorm sees the same batches in both runs
            optimizer.zero_grad()
            step(idx).backward()
            optimizer.step()

    assert_same_and_trained(cached.peft_model, plain, adapted(family, fusion=fusion))


def test_trainer_from_cache_equals_trainer_without_and_saves_the_adapter(tmp_path) -> None:
    data = PixelExamples("timm-efficientnet", n=16)
    args = dict(per_device_train_batch_size=4, max_steps=3, dataloader_num_workers=0, disable_tqdm=True)
    plain = adapted("timm-efficientnet", wrap=True, fusion="add")
    Trainer(model=plain, args=training_args(tmp_path / "a", **args), train_dataset=data).train()

    peft_model = adapted("timm-efficientnet", wrap=True, fusion="add")
    cached = CachedSkipModel(peft_model, build_prefix_cache(peft_model, data))
    args_b = training_args(tmp_path / "b", **args)
    Trainer(model=cached, args=args_b, train_dataset=cached.dataset()).train()

    assert_same_and_trained(peft_model, plain, adapted("timm-efficientnet", wrap=True, fusion="add"))

    cached.save_pretrained(tmp_path / "adapter")  # = peft_model.save_pretrained
    reloaded = PeftModel.from_pretrained(TimmImageClassifier(build("timm-efficientnet")), tmp_path / "adapter").eval()
    peft_model.eval()
    with torch.no_grad():
        x = data.items["x"]
        torch.testing.assert_close(reloaded(pixel_values=x).logits, peft_model(pixel_values=x).logits, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ memory vs disk
def test_disk_cache_equals_memory_cache_and_is_reused(tmp_path) -> None:
    model = adapted("timm-efficientnet", fusion="add").eval()
    data = Examples("timm-efficientnet", n=11)
    memory = build_prefix_cache(model, data, batch_size=4)
    disk = build_prefix_cache(model, data, batch_size=3, directory=tmp_path)
    assert disk.directory == tmp_path and memory.directory is None
    assert disk.key == memory.key

    index = all_indices(data)
    (memory_args, memory_kwargs), (disk_args, disk_kwargs) = memory.inputs(index), disk.inputs(index)
    torch.testing.assert_close(disk_args, memory_args, rtol=0, atol=0)
    assert disk_kwargs == memory_kwargs
    torch.testing.assert_close(disk.labels, memory.labels, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            CachedSkipModel(model, disk)(index).logits, CachedSkipModel(model, memory)(index).logits, rtol=0, atol=0
        )

    stamp = (tmp_path / "meta.json").stat().st_mtime_ns
    reopened = build_prefix_cache(model, data, directory=tmp_path)  # same key: reused, nothing rebuilt
    assert (tmp_path / "meta.json").stat().st_mtime_ns == stamp
    torch.testing.assert_close(reopened.inputs(index)[0], memory_args, rtol=0, atol=0)
    PrefixCache.load(tmp_path, model, data)  # checks and accepts


# ------------------------------------------------------------------------------------------ invalidation
def test_changed_prefix_weights_are_detected_and_later_weights_are_not() -> None:
    model = adapted("timm-efficientnet")
    data = Examples("timm-efficientnet")
    cache = build_prefix_cache(model, data)
    base = model.get_base_model()
    with torch.no_grad():
        base.conv_head.weight.add_(1.0)  # after the source block: the cached inputs are still right
    cache.check(model, data)
    with torch.no_grad():
        base.conv_stem.weight.add_(1e-3)  # before it: they are stale
    with pytest.raises(ValueError, match=r"(?s)prefix weights.*Rebuild it"):
        cache.check(model, data)
    with pytest.raises(ValueError, match="prefix weights"):
        CachedSkipModel(model, cache)


def test_other_layer_is_detected() -> None:
    data = Examples("timm-efficientnet")
    cache = build_prefix_cache(adapted("timm-efficientnet"), data)
    other = adapted("timm-efficientnet", source_layer=1)
    with pytest.raises(ValueError, match=r"layer: the cache holds the inputs of 'blocks\.\d\.\d'"):
        cache.check(other, data)


@pytest.mark.parametrize("other", [Examples("timm-efficientnet", seed=4), Examples("timm-efficientnet", n=10)])
def test_other_data_is_detected(other: Examples) -> None:
    model = adapted("timm-efficientnet")
    cache = build_prefix_cache(model, Examples("timm-efficientnet"))
    with pytest.raises(ValueError, match=r"(?s)data: the cache was built over 12 examples.*build_prefix_cache"):
        cache.check(model, other)


def test_disk_cache_with_another_key_is_refused(tmp_path) -> None:
    data = Examples("timm-efficientnet")
    build_prefix_cache(adapted("timm-efficientnet"), data, directory=tmp_path)
    other = adapted("timm-efficientnet", source_layer=1)
    with pytest.raises(ValueError, match=r"(?s)layer.*overwrite=True"):
        build_prefix_cache(other, data, directory=tmp_path)
    with pytest.raises(ValueError, match=r"(?s)layer.*overwrite=True"):
        PrefixCache.load(tmp_path, other, data)
    rebuilt = build_prefix_cache(other, data, directory=tmp_path, overwrite=True)
    PrefixCache.load(tmp_path, other, data)
    assert rebuilt.layer == other.peft_config["default"].source_layer


def test_augmented_data_is_refused() -> None:
    with pytest.raises(ValueError, match=r"(?s)random augmentation.*stale.*drop augmentation.*without the cache"):
        build_prefix_cache(adapted("timm-efficientnet"), NoisyExamples("timm-efficientnet"))


def test_trainable_prefix_is_refused() -> None:
    model = adapted("timm-efficientnet", modules_to_save=["conv_stem"])
    with pytest.raises(ValueError, match="prefix is not frozen"):
        build_prefix_cache(model, Examples("timm-efficientnet"))


def test_add_fusion_on_a_family_without_suffix_runner_suggests_replace() -> None:
    data = Examples("hf-convnext")
    model = adapted("hf-convnext", fusion="add")
    with pytest.raises(
        NotImplementedError, match=r"(?s)EfficientNet.*not for ConvNextForImageClassification.*fusion='replace'"
    ):
        CachedSkipModel(model, build_prefix_cache(model, data))
    replace = adapted("hf-convnext", fusion="replace").eval()
    cached = CachedSkipModel(replace, build_prefix_cache(replace, data)).eval()
    with torch.no_grad():
        torch.testing.assert_close(cached(all_indices(data)).logits, logits_of(replace, data.items), rtol=0, atol=1e-6)


def test_accelerate_loop_trains_only_the_adapter_and_keeps_frozen_batchnorm_frozen() -> None:
    from accelerate import Accelerator

    model = adapted("timm-resnet", fusion="add")
    cached = CachedSkipModel(model, build_prefix_cache(model, Examples("timm-resnet")))
    base = model.get_base_model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.SGD([p for p in cached.parameters() if p.requires_grad], lr=0.1)
    loader = torch.utils.data.DataLoader(cached.dataset(), batch_size=4, shuffle=True)  # torch's default collate
    prepared, optimizer, loader = accelerator.prepare(cached, optimizer, loader)
    prepared.train()
    assert not base.layer4[0].bn1.training and base.layer3[0].skipcollapse_block["default"].bn1.training
    for batch in loader:
        optimizer.zero_grad()
        accelerator.backward(prepared(**batch).loss)
        optimizer.step()
    after = base.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".skipcollapse_" in k for k in changed), sorted(changed)[:5]


class _OneChanged(Examples):
    """Examples with one example changed after the cache was built: a pixel, or a label."""

    def __init__(self, what: str, index: int = 7) -> None:
        super().__init__("timm-resnet", n=40)
        if what == "pixel":
            self.items["x"][index, 0, 0, 0] += 1.0
        else:
            self.items["labels"][index] = (self.items["labels"][index] + 1) % 3


class _RarelyAugmented(Examples):
    """Only example 19 of 40 is augmented: a sample of a few evenly spaced examples (0, 6, 11, 17, 22, ...) misses
    it."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        if i == 19:
            item["x"] = item["x"] + 0.01 * torch.randn_like(item["x"])
        return item


@pytest.mark.parametrize("what", ["pixel", "label"])
def test_one_changed_example_anywhere_makes_the_cache_stale(what: str, tmp_path) -> None:
    model = adapted("timm-resnet", fusion="replace")
    build_prefix_cache(model, Examples("timm-resnet", n=40), directory=tmp_path / "cache")
    with pytest.raises(ValueError, match="their contents differ"):
        build_prefix_cache(model, _OneChanged(what), directory=tmp_path / "cache")


def test_rare_augmentation_is_always_detected() -> None:
    model = adapted("timm-resnet", fusion="replace")
    with pytest.raises(ValueError, match=r"examples \[19\]"):
        build_prefix_cache(model, _RarelyAugmented("timm-resnet", n=40))


def test_concurrent_builders_of_one_folder_share_one_complete_cache(tmp_path) -> None:
    import threading

    model = adapted("timm-resnet", fusion="replace")
    data = Examples("timm-resnet", n=40)
    results, errors = [], []

    def build() -> None:
        try:
            results.append(build_prefix_cache(model, data, directory=tmp_path / "cache", batch_size=4))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    reference = build_prefix_cache(model, data)
    for cache in results:
        torch.testing.assert_close(cache.inputs(all_indices(data))[0][0], reference.inputs(all_indices(data))[0][0])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "cache" and not p.name.endswith(".lock")]
    assert leftovers == []  # no half-built folder left behind


def test_a_disk_without_room_is_a_clear_error_before_any_mapping(tmp_path, monkeypatch) -> None:
    import skipcollapse.cache.store as cache_module

    monkeypatch.setattr(cache_module, "_free_bytes", lambda directory: 1024)
    model = adapted("timm-resnet", fusion="replace")
    with pytest.raises(ValueError, match=r"needs .* MiB .* only 0.0 MiB are free"):
        build_prefix_cache(model, Examples("timm-resnet", n=40), directory=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
