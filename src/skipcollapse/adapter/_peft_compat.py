"""The one place skipcollapse reaches into peft internals: a `PeftType` member for an out-of-tree method.

peft keys its registries (config, tuner, prefix) by members of the `PeftType` enum, and `register_peft_method`
(peft >= 0.15, huggingface/peft#2282) registers a method under a name that must already be a `PeftType`. An enum
cannot be extended through its public API, and peft's discussion of out-of-tree methods (huggingface/peft#2273,
huggingface/peft#2634) ends with adding a folder to peft itself. Until peft accepts methods it does not ship, we
add one member the way `enum` stores members (name map, value map, ordered names, class attribute), so that
`PeftType("SKIPCOLLAPSE")`, `PeftType.SKIPCOLLAPSE` and iteration behave as for a built-in method and
`adapter_config.json` files round-trip through `PeftConfig.from_pretrained`. If peft grows a supported way,
only this module changes.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType


def peft_type_member(name: str) -> PeftType:
    """The `PeftType` member called `name`, added if peft does not have it (idempotent)."""
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
