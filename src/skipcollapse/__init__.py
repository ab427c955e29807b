"""skipcollapse: Skip-Connection Layer Fine-Tuning (Li et al.) as a peft method, with neural-collapse tools.

Importing the package registers the method with peft, so ``get_peft_model(model, SkipCollapseConfig())`` and
``PeftModel.from_pretrained`` work like for LoRA.
"""

from .architectures import block_names, discover
from .config import SkipCollapseConfig
from .model import SkipCollapseModel, head_features
from .peft_registration import PEFT_TYPE, register

register()

__version__ = "0.1.0"

__all__ = [
    "PEFT_TYPE",
    "SkipCollapseConfig",
    "SkipCollapseModel",
    "block_names",
    "discover",
    "head_features",
]
