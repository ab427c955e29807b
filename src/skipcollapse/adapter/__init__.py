"""The SkipCollapse adapter as a peft tuner, laid out like peft's `tuners/<method>/`.

`config` (what is adapted), `architectures` (where it lives in each model family), `layer` (the two wrapped
modules), `model` (the BaseTuner that injects them) and `registration` (making the method known to peft).
"""

from .architectures import block_names, discover
from .config import SkipCollapseConfig
from .model import SkipCollapseModel
from .registration import PEFT_TYPE, register

__all__ = ["PEFT_TYPE", "SkipCollapseConfig", "SkipCollapseModel", "block_names", "discover", "register"]
