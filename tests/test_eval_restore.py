"""Reading features switches a model to eval and then gives every module its own mode back (issue 18).

A frozen BatchNorm kept in eval inside a model in train mode (what `keep_frozen_batchnorm_in_eval` and the tuner
arrange) must still be in eval afterwards: restoring only the root with ``model.train(was_training)`` would put it
back into batch statistics.
"""

from __future__ import annotations

import torch
from tiny_models import build
from torch import nn

from skipcollapse.collapse.features import HeadInputs, iterate_features
from skipcollapse.probe import probe_layers


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(pixel_values)).mean(dim=(2, 3)))


def _train_with_frozen_batchnorm(model: nn.Module) -> list[nn.Module]:
    """`model` in train mode with its BatchNorms frozen in eval; returns those BatchNorms."""
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    for norm in norms:
        norm.eval()
    return norms


def test_iterate_features_keeps_a_frozen_batchnorm_in_eval() -> None:
    model = TinyNet()
    norms = _train_with_frozen_batchnorm(model)
    batches = [{"pixel_values": torch.randn(4, 3, 8, 8), "labels": torch.tensor([0, 1, 2, 0])}]
    with HeadInputs(model, head_module="fc") as capture:
        for _ in iterate_features(model, batches, capture):
            assert not any(m.training for m in model.modules())  # eval everywhere while reading
    assert model.training and model.conv.training
    assert not any(norm.training for norm in norms)


def test_probe_keeps_a_frozen_batchnorm_in_eval() -> None:
    model = build("timm-resnet")
    norms = _train_with_frozen_batchnorm(model)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(3, 32, 32, generator=g), i % 3) for i in range(12)]
    probe_layers(model, data, 3, batch_size=6, progress=False)
    assert model.training
    assert not any(norm.training for norm in norms)
    others = [m for m in model.modules() if not isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(m.training for m in others)
