"""Where skipcollapse meets training loops: the transformers Trainer (loss, callback) and timm models."""

from .callbacks import NeuralCollapseCallback, measure_collapse
from .timm import TimmImageClassifier
from .trainer import CollapseLossFunc, CollapseTrainer

__all__ = ["CollapseLossFunc", "CollapseTrainer", "NeuralCollapseCallback", "TimmImageClassifier", "measure_collapse"]
