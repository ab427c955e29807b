"""Make SkipCollapse a peft method: a `PeftType` member plus peft's own `register_peft_method`.

peft keys its registries by members of the `PeftType` enum, and an enum cannot be extended through its
public API. We add one member the way `enum` itself stores members (name map, value map, ordered names,
class attribute), so that `PeftType("SKIPCOLLAPSE")`, `PeftType.SKIPCOLLAPSE` and iteration all behave like
for a built-in method, and `adapter_config.json` files round-trip through `PeftConfig.from_pretrained`.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

METHOD_NAME = "skipcollapse"


def _peft_type_member(name: str) -> PeftType:
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


PEFT_TYPE: PeftType = _peft_type_member(METHOD_NAME.upper())


def register() -> None:
    """Register the config and tuner with peft (idempotent: importing twice is harmless)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from .config import SkipCollapseConfig
    from .model import SkipCollapseModel

    if PEFT_TYPE_TO_TUNER_MAPPING.get(PEFT_TYPE) is SkipCollapseModel:
        return
    register_peft_method(name=METHOD_NAME, config_cls=SkipCollapseConfig, model_cls=SkipCollapseModel)
