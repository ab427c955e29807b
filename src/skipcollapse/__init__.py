"""skipcollapse: Skip-Connection Layer Fine-Tuning (Li et al.) as a peft method, with neural-collapse tools.

Importing the package registers the method with peft, so ``get_peft_model(model, SkipCollapseConfig())`` and
``PeftModel.from_pretrained`` work like for LoRA.
"""

from ._io import save_adapter_atomically
from .adapter import PEFT_TYPE, SkipCollapseConfig, SkipCollapseModel, block_names, discover, register
from .cache import CachedSkipModel, PrefixCache, build_prefix_cache
from .collapse import (
    CollapseLoss,
    CollapseMetrics,
    GeometricComplexityRegularizer,
    HeadInputs,
    collapse_metrics,
    collapse_penalty,
    gc_penalty,
    geometric_complexity,
)
from .integrations import (
    CollapseLossFunc,
    CollapseTrainer,
    NeuralCollapseCallback,
    TimmImageClassifier,
    measure_collapse,
)

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
    "measure_collapse",
    "save_adapter_atomically",
]
