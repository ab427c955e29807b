"""skipcollapse: Skip-Connection Layer Fine-Tuning (Li et al.) as a peft method, with neural-collapse tools.

Importing the package registers the method with peft, so ``get_peft_model(model, SkipCollapseConfig())`` and
``PeftModel.from_pretrained`` work like for LoRA.
"""

from .architectures import block_names, discover
from .cache import CachedSkipModel, PrefixCache, build_prefix_cache
from .callbacks import NeuralCollapseCallback, measure_collapse
from .config import SkipCollapseConfig
from .features import HeadInputs
from .geometric_complexity import GeometricComplexityRegularizer, gc_penalty, geometric_complexity
from .loss import CollapseLoss, collapse_penalty
from .metrics import CollapseMetrics, collapse_metrics
from .model import SkipCollapseModel, head_features
from .peft_registration import PEFT_TYPE, register
from .timm_classifier import TimmImageClassifier
from .trainer import CollapseLossFunc, CollapseTrainer

register()

__version__ = "0.1.0"

__all__ = [
    "PEFT_TYPE",
    "CachedSkipModel",
    "PrefixCache",
    "build_prefix_cache",
    "CollapseLoss",
    "CollapseLossFunc",
    "CollapseMetrics",
    "CollapseTrainer",
    "GeometricComplexityRegularizer",
    "HeadInputs",
    "NeuralCollapseCallback",
    "SkipCollapseConfig",
    "SkipCollapseModel",
    "TimmImageClassifier",
    "block_names",
    "collapse_metrics",
    "collapse_penalty",
    "discover",
    "gc_penalty",
    "geometric_complexity",
    "head_features",
    "measure_collapse",
]
