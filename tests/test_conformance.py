"""`get_peft_model(model, SkipCollapseConfig(fusion=...))` with no names, on every architecture of
`conformance_models.ARCHS`: what a user who brings any transformers or timm classifier gets.

Per architecture and fusion: the logits equal the base model's at initialisation (add, concat); a few steps move
the head copy, the gate and the block copy; one example gives the same logits alone as inside a batch (padded, for
text); the adapter saved and reloaded onto a fresh base gives the same logits; the source block runs once per
forward; the pooled width is the block's feature width. Architectures whose source cannot be tapped are refused at
`get_peft_model` with the reason (`REFUSED`).
"""

from __future__ import annotations

import pytest
import torch
from conformance_models import ARCHS, Arch, forward_logits, make_inputs
from peft import PeftModel, get_peft_model
from torch import nn

from skipcollapse import SkipCollapseConfig
from skipcollapse.adapter.architectures import infer_output_width
from skipcollapse.adapter.layer import SkipSourceLayer, first_tensor

FUSIONS = ("add", "concat", "replace")

REFUSED = {
    "albert": "runs 4 times in one forward pass",  # one layer shared across depth
}
"""Architecture -> why `get_peft_model` refuses it (the message it must give)."""

# Variants that repeat a covered architecture's code path (same modeling file, same discovery rule) are kept out of
# the fast suite; the list keeps every kind and every family the issue names.
_REPEATS = (
    "opt",
    "phi",
    "falcon",
    "bloom",
    "gptj",
    "stablelm",
    "qwen3-moe",
    "mixtral",
    "olmo2",
    "gemma3-text",
    "smollm3",
    "gpt-bigcode",
    "gpt-oss",
)
# Not covered: the token these two classify is neither the first, nor a mean, nor every token (XLNet summarises its
# last position, Funnel pools pairs of positions and drops the last one), and the plain models give a row other logits
# when it is right-padded (`pads_consistently=False`); with source_layer, head_module and pooling named they run.
# Distilled timm models (DeiT-distilled, LeViT, RepViT) average two heads, so there is no one linear layer to fuse at;
# `get_peft_model` says to name the modules. timm's Hiera built with img_size= records no input size an example batch
# could be built from; `get_peft_model` says so and how to declare it.
NOT_COVERED = ("xlnet", "funnel", "timm-deit-distilled", "timm-levit_128s", "timm-repvit_m0_9", "timm-hiera_tiny_224")
FAST = [a for a in ARCHS if a.name not in _REPEATS + NOT_COVERED]


def _source(model: PeftModel) -> SkipSourceLayer:
    return model.get_base_model().get_submodule(model.peft_config["default"].source_layer)


def _inputs(arch: Arch, batch: int = 4, pad: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    return make_inputs(arch, batch=batch, seed=seed, pad=pad)


def _row(inputs: dict[str, torch.Tensor], index: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Example `index` alone, without its padding (`length` real tokens)."""
    return {
        k: v[index : index + 1, :length] if length is not None else v[index : index + 1] for k, v in inputs.items()
    }


def _train(model: PeftModel, arch: Arch, steps: int = 3) -> None:
    """A few SGD steps in train mode (dropout off: HF MobileNets drop 99.9% of the head input), so every trainable
    part has had a gradient through an open gate."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.05)
    inputs = _inputs(arch, pad=2 if arch.kind in ("text", "decoder") else 0)
    labels = torch.arange(4) % 3
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(forward_logits(model, inputs), labels).backward()
        optimizer.step()


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("arch", FAST, ids=lambda a: a.name)
def test_adapter_conforms_with_no_names_given(arch: Arch, fusion: str, tmp_path) -> None:
    inputs = _inputs(arch, pad=3 if arch.kind in ("text", "decoder") else 0)
    base = arch.build()
    if arch.name in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[arch.name]):
            get_peft_model(base, SkipCollapseConfig(fusion=fusion))
        return
    expected = forward_logits(base, inputs).detach()
    model = get_peft_model(base, SkipCollapseConfig(fusion=fusion))
    config = model.peft_config["default"]
    model.eval()

    # logits equal the base at initialisation (replace classifies P(s) from the start: only the shape is the base's)
    with torch.no_grad():
        logits = forward_logits(model, inputs)
    assert logits.shape == expected.shape
    if fusion != "replace":
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)

    # the source block runs once per forward, and its pooled width is the block's feature width
    source = _source(model)
    calls = []
    handle = source.register_forward_hook(lambda m, a, out: calls.append(first_tensor(out).shape))
    with torch.no_grad():
        forward_logits(model, inputs)
    handle.remove()
    assert len(calls) == 1, f"{config.source_layer} ran {len(calls)} times in one forward"
    shape = calls[0]
    if len(shape) == 4:  # a map: its channels are where the block's last layer says, whichever axis that is
        assert config.source_dim == infer_output_width(source.base_layer) in (shape[1], shape[-1]), (shape, config)
    else:  # tokens [B, T, D] or vectors [B, D]
        assert config.source_dim == shape[-1], (shape, config.source_dim, config.pooling)

    # a few steps move the head copy, the gate and the block copy (gradients reach them: tiny random HF MobileNets
    # have head inputs of 1e-30, whose updates vanish in float32 rounding)
    head = model.get_base_model().get_submodule(config.head_module)
    parts = {"head copy": [head.skipcollapse_head_copy["default"].weight]}
    parts["block copy"] = [p for p in source.skipcollapse_block["default"].parameters() if p.requires_grad]
    if fusion != "replace":
        parts["gate"] = [head.skipcollapse_gate["default"].weight]
    before = {k: [p.detach().clone() for p in v] for k, v in parts.items()}
    _train(model, arch)
    untrained = [
        k
        for k, params in parts.items()
        if all(torch.equal(p.detach(), b) for p, b in zip(params, before[k]))
        and not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)
    ]
    assert not untrained, f"not trained: {untrained}"
    assert all(torch.isfinite(p).all() for params in parts.values() for p in params)

    # one example alone equals it inside the batch: padded (text), mixed (all)
    model.eval()
    with torch.no_grad():
        batch_logits = forward_logits(model, inputs)
        real = None if arch.kind not in ("text", "decoder") else int(inputs["attention_mask"][1].sum())
        alone = forward_logits(model, _row(inputs, 1, real))
    if arch.pads_consistently:
        torch.testing.assert_close(alone[0], batch_logits[1], rtol=1e-4, atol=1e-5)

    # save / reload onto a fresh base: the same logits
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(arch.build(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(reloaded, inputs), batch_logits, rtol=1e-5, atol=1e-6)


def test_the_fast_list_covers_every_kind_and_forty_architectures() -> None:
    kinds = {a.kind for a in FAST}
    assert kinds == {"image", "text", "decoder", "timm"}
    assert len(FAST) - len(REFUSED) >= 40


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_head_inputs_of_a_decoder_are_the_vectors_it_classifies(name: str) -> None:
    """The features z that metrics and the collapse loss see are the head inputs at the token the model classifies
    (the last real one), for the plain model and the adapted one alike: the head applied to z gives the logits."""
    from skipcollapse import HeadInputs

    arch = next(a for a in ARCHS if a.name == name)
    inputs = _inputs(arch, pad=3)
    for model in (arch.build(), get_peft_model(arch.build(), SkipCollapseConfig())):
        with HeadInputs(model) as capture, torch.no_grad():
            logits = forward_logits(model, inputs)
            z = capture.latest
            assert z.shape == (4, model.config.hidden_size)
            weight = capture.head_weight()
            torch.testing.assert_close(z @ weight.T, logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fusion", [("bert", "add"), ("roberta", "replace"), ("modernbert", "concat")])
def test_mean_pooling_leaves_padding_out(name: str, fusion: str) -> None:
    arch = next(a for a in ARCHS if a.name == name)
    model = get_peft_model(arch.build(), SkipCollapseConfig(fusion=fusion, pooling="mean")).eval()
    with torch.no_grad():
        for module in model.modules():
            gate = getattr(module, "skipcollapse_gate", None)
            if gate is not None and "default" in gate:
                gate["default"].weight.fill_(1.0)
        inputs = _inputs(arch, pad=5)
        batch = forward_logits(model, inputs)
        alone = forward_logits(model, _row(inputs, 1, int(inputs["attention_mask"][1].sum())))
    torch.testing.assert_close(alone[0], batch[1], rtol=1e-5, atol=1e-6)
