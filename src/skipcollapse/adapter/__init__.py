"""The SkipCollapse adapter as a peft tuner, laid out like peft's `tuners/<method>/`.

`config` (what is adapted), `architectures` (where the blocks and the head are, from what timm and transformers
publish), `measure` (what one example batch shows about shapes), `layer` (the wrapped modules and the per-call
scope), `model` (the BaseTuner that injects them) and `registration` (making the method known to peft).
`discover` and `candidates_message` are the surface the collapse tools and the probe use.
"""

from .architectures import block_names, candidates_message, discover
from .config import SkipCollapseConfig
from .model import SkipCollapseModel
from .registration import PEFT_TYPE, register

__all__ = [
    "PEFT_TYPE",
    "SkipCollapseConfig",
    "SkipCollapseModel",
    "block_names",
    "candidates_message",
    "discover",
    "register",
]
