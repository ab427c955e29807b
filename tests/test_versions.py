"""The installed torch, transformers and peft are at or above the floors pyproject.toml declares."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _floors() -> dict[str, Version]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep.replace(" ", ""))
        if match:
            floors[match[1]] = Version(match[2])
    return floors


@pytest.mark.parametrize("package", ["torch", "transformers", "peft", "accelerate"])
def test_installed_version_meets_the_declared_floor(package: str) -> None:
    floor = _floors()[package]
    installed = Version(version(package).split("+")[0])
    assert installed >= floor, f"{package} {installed} is below the floor {floor} in pyproject.toml"


def test_peft_floor_has_the_registration_api_the_adapter_uses() -> None:
    from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
    from peft.utils import register_peft_method  # noqa: F401

    assert hasattr(BaseTunerLayer, "set_requires_grad") and hasattr(BaseTuner, "_cast_adapter_dtype")
