"""Neural-collapse and geometric-complexity tools: metrics, the collapse-aware loss, transferability scores and
the capture of the head input. They work on any classifier and do not need the adapter."""

from .features import HeadInputs
from .geometric_complexity import GeometricComplexityRegularizer, gc_penalty, geometric_complexity
from .loss import CollapseLoss, collapse_penalty
from .metrics import CollapseMetrics, collapse_metrics

__all__ = [
    "CollapseLoss",
    "CollapseMetrics",
    "GeometricComplexityRegularizer",
    "HeadInputs",
    "collapse_metrics",
    "collapse_penalty",
    "gc_penalty",
    "geometric_complexity",
]
