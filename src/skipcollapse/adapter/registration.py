"""Make SkipCollapse a peft method: a `PeftType` member (see `_peft_compat`) plus peft's `register_peft_method`."""

from __future__ import annotations

from peft.utils.peft_types import PeftType

from ._peft_compat import peft_type_member

METHOD_NAME = "skipcollapse"


PEFT_TYPE: PeftType = peft_type_member(METHOD_NAME.upper())


def register() -> None:
    """Register the config and tuner with peft (idempotent: importing twice is harmless)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from .config import SkipCollapseConfig
    from .model import SkipCollapseModel

    if PEFT_TYPE_TO_TUNER_MAPPING.get(PEFT_TYPE) is SkipCollapseModel:
        return
    register_peft_method(name=METHOD_NAME, config_cls=SkipCollapseConfig, model_cls=SkipCollapseModel)
