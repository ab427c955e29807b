"""What one example batch shows about a model: measured once, when an adapter is created.

Reading sizes and layouts off layer definitions goes wrong where the code around the layers decides (a stage that
downsamples at its end, a timm Swin stage that returns channels-last maps, a decoder whose head runs on every
token). So the tuner runs the base model once on a small batch built from what the model says about its inputs and
records what it needs:

- how often the source block runs per forward (a layer shared across depth, ALBERT's, runs at every depth);
- the source block's hidden states, hence its pooled width and, for maps, which axis holds the channels;
- the head's input, and how the model turns its last block's output into it: by which positions of that output
  the head input depends on (the gradient of a random projection of the head input): the first token only (CLS),
  every token (a mean), or every token separately (a head that runs per token, as decoder classifiers' do);
- the output structure of every module a ``replace`` adapter bypasses, so the bypass can return that structure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from .._torch_utils import device_of, dtype_of, eval_mode
from .architectures import infer_output_width, is_timm_model
from .layer import OutputTemplate, adapters_off, first_tensor, output_template


@dataclass
class Measurement:
    source_calls: int = 0
    source_after_head: bool = False  # the source block ran only after the head
    source_hidden: torch.Tensor | None = None
    head_input: torch.Tensor | None = None
    classified: str = ""  # how the head input comes from the last block's output: cls, mean, per_token or avg
    templates: dict[str, OutputTemplate] = field(default_factory=dict)


def example_inputs(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """A batch of two distinct examples the model accepts, at the input size the model is configured for (a
    transformers config's ``image_size``, a timm model's ``patch_embed.img_size`` or ``pretrained_cfg``), or None
    when the model says nothing about its inputs."""
    config = getattr(model, "config", None)
    name = getattr(model, "main_input_name", None)
    device = _execution_device(model)
    if device is None:
        return None  # weights on the meta device and no hook that brings them: the model cannot run yet
    dtype = dtype_of(model, torch.float32)
    generator = torch.Generator().manual_seed(0)
    if name == "input_ids" and config is not None:
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        special = {getattr(config, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
        usable = [i for i in range(min(vocab, 64)) if i not in special]
        if not usable:
            return None
        # without a pad token a decoder classifier refuses batches of more than one (it cannot find the last token)
        rows = 2 if getattr(config, "pad_token_id", None) is not None else 1
        picks = torch.randint(len(usable), (rows, 8), generator=generator)
        ids = torch.tensor(usable)[picks].to(device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if name == "pixel_values" and config is not None:
        vision = getattr(config, "vision_config", None)  # CLIP, SigLIP: the image tower's config
        size = getattr(config, "image_size", None) or getattr(vision, "image_size", None) or 224
        size = size if isinstance(size, int) else size[0]
        channels = getattr(config, "num_channels", None) or getattr(vision, "num_channels", None) or 3
        return {"pixel_values": torch.randn(2, channels, size, size, generator=generator).to(device, dtype)}
    inner = getattr(model, "timm_model", model)
    if is_timm_model(inner):
        height, width = _timm_input_size(inner)
        channels = next((m.in_channels for m in inner.modules() if isinstance(m, nn.Conv2d)), 3)
        pixels = torch.randn(2, channels, height, width, generator=generator).to(device, dtype)
        return {"pixel_values": pixels} if inner is not model else {"x": pixels}
    return None


def _execution_device(model: nn.Module) -> torch.device | None:
    """Where the model runs: accelerate's hook's execution device (offloaded weights sit on the meta device until
    the hook brings them), else its weights' device; None for weights on the meta device with no such hook."""
    for module in (model, *model.children()):
        hooked = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        if hooked is not None:
            return torch.device(hooked) if not isinstance(hooked, torch.device) else hooked
    device = device_of(model)
    return None if device.type == "meta" else device


def _timm_input_size(model: nn.Module) -> tuple[int, int]:
    """The image size a timm model was built for: its patch embedding's (set by ``img_size=``; `pretrained_cfg`
    keeps the pretrained size) or, for convolutional models that take any size, `pretrained_cfg`'s."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[1:]
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def call_with(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    return model(inputs["x"]) if "x" in inputs else model(**inputs)


def measure(
    model: nn.Module, inputs: dict[str, torch.Tensor], source: str, head: str, last_block: str, watched: list[str]
) -> Measurement:
    """Run `model` once on `inputs` (eval mode, modes restored) and record what the tuner needs."""
    found = Measurement()
    events: list[str] = []
    leaf: list[torch.Tensor] = []

    def on_source(module: nn.Module, args: Any, output: Any) -> None:
        found.source_calls += 1
        found.source_after_head = found.source_after_head or ("head" in events and "source" not in events)
        events.append("source")
        if found.source_hidden is None:
            found.source_hidden = first_tensor(output).detach()

    def on_last_block(module: nn.Module, args: Any, output: Any) -> Any:
        # The last block's hidden states become a leaf, so the head input's dependence on them can be measured;
        # gradients are recorded from here on only (nothing before holds a graph, nor caches a non-leaf tensor).
        torch.set_grad_enabled(True)
        hidden = first_tensor(output).detach().requires_grad_(True)
        leaf[:] = [hidden]
        leaves, spec = pytree.tree_flatten(output)
        at = next(i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor))
        return pytree.tree_unflatten(leaves[:at] + [hidden] + leaves[at + 1 :], spec)

    def on_head(module: nn.Module, args: Any) -> None:
        events.append("head")
        if found.head_input is None and args:
            found.head_input = args[0]

    batch = next(iter(inputs.values())).shape[0]
    tokens = inputs["input_ids"].shape[1] if "input_ids" in inputs else None

    def on_watched(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            found.templates.setdefault(name, output_template(output, args, batch, tokens))

        return hook

    hooks = [
        (source, "forward", on_source),
        (last_block, "forward", on_last_block),
        (head, "pre", on_head),
        *[(name, "forward", on_watched(name)) for name in watched],
    ]
    with eval_mode(model), torch.inference_mode(False), torch.no_grad():
        try:
            with _hooked(model, hooks):
                call_with(model, inputs)
        except Exception as error:  # the model's own error, reported with what SkipCollapse was doing
            shapes = {k: tuple(v.shape) for k, v in inputs.items()}
            raise ValueError(
                f"SkipCollapse measures the source block and the head of {type(model).__name__} with one forward pass "
                f"of an example batch {shapes}, built from the input size the model declares (a transformers "
                "config's image_size, a timm model's patch_embed.img_size or pretrained_cfg['input_size']), and the "
                f"model rejected it: {type(error).__name__}: {error}. Declare the size the model takes there (e.g. "
                "timm.create_model(..., img_size=S) sets both for ViTs; for others set "
                "model.pretrained_cfg['input_size'] = (C, S, S))"
            ) from error
        finally:
            torch.set_grad_enabled(False)
        z = found.head_input
        if z is not None and leaf and z.requires_grad:
            with torch.enable_grad():
                found.classified = _classified(leaf[0], z)
    found.head_input = None if z is None else z.detach()
    return found


def classified_pooling(model: nn.Module) -> str:
    """How `model` turns its last block's output into its head's input (cls, mean, per_token, avg or flatten),
    measured on an example batch; "mean" where no example can be built."""
    from .architectures import discover

    arch = discover(model)
    inputs = example_inputs(model)
    if arch is None or inputs is None:
        return "mean"
    with adapters_off(model):  # the base model's own pooling, whatever an adapter on it does
        found = measure(model, inputs, arch.blocks[-1], arch.head, arch.blocks[-1], [])
    return found.classified or "mean"


def _classified(hidden: torch.Tensor, z: torch.Tensor) -> str:
    """How the head input z comes from the last block's hidden states, from which positions it depends on."""
    if hidden.dim() != 3:
        return "avg" if hidden.dim() > 3 else "flatten"
    if z.dim() == 3 and z.shape[1] == hidden.shape[1]:
        return "per_token"
    probe = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(z.device, z.dtype)
    (grad,) = torch.autograd.grad((z * probe).sum(), hidden, allow_unused=True)
    if grad is None:
        return "mean"
    reached = grad[0].abs().sum(dim=-1) > 0  # per token of the first example
    if bool(reached[0]) and not bool(reached[1:].any()):
        return "cls"
    return "mean"


def channels_last(hidden: torch.Tensor, block: nn.Module, model: nn.Module) -> bool:
    """Whether a [B, H, W, C] map holds its channels last: the axis whose size is the block's output width (read
    off its last layer); where both axes have that size, what the model says of its output format (timm)."""
    if hidden.dim() < 4:
        return hidden.dim() == 3
    width = infer_output_width(block)
    first, last = hidden.shape[1] == width, hidden.shape[-1] == width
    if first != last:
        return last
    inner = getattr(model, "timm_model", model)
    return str(getattr(inner, "output_fmt", "NCHW")) == "NHWC"


@contextlib.contextmanager
def _hooked(model: nn.Module, hooks: list[tuple[str, str, Any]]) -> Iterator[None]:
    handles = []
    try:
        for name, kind, fn in hooks:
            module = model.get_submodule(name)
            register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
            handles.append(register(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()
