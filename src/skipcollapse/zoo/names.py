"""Names a user types for backbones and tasks: recognised with their common variants, or refused at once.

Offline (``HF_HUB_OFFLINE=1``, how these machines and the tests run), a name that is neither embedded nor a local
path cannot work, and passing it on costs half a minute of hub retries and a long traceback. `resolve_backbone`
and `resolve_task` catch that up front with the choices listed; `main_with_clean_errors` turns such an error into
one line on stderr and exit status 2 for the recipes and the CLI.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EMBEDDED_BACKBONES = ("efficientnet_lite0", "mobilenetv2", "minilm")
EMBEDDED_TASKS = ("digits", "tiny-text", "fashion-mnist", "rotten-tomatoes", "bbc-news")
# What people type for the embedded sets, and the embedded set that stands in offline.
_TASK_HINTS = {
    "mnist": "digits",
    "emnist": "digits",
    "usps": "digits",
    "zalando-datasets/fashion_mnist": "fashion-mnist",
    "cornell-movie-review-data/rotten_tomatoes": "rotten-tomatoes",
    "sst2": "rotten-tomatoes",
    "ag_news": "bbc-news",
    "text": "tiny-text",
}


class UnknownNameError(ValueError):
    """A backbone or task name that cannot be loaded here; the message lists what can."""


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _canonical(name: str, choices: tuple[str, ...]) -> str | None:
    key = name.strip().lower().replace("-", "_")
    return next((c for c in choices if c.replace("-", "_") == key), None)


def resolve_backbone(name: str) -> str:
    """`name` as `load_backbone` knows it (``efficientnet-lite0`` -> ``efficientnet_lite0``), or UnknownNameError."""
    embedded = _canonical(name, EMBEDDED_BACKBONES)
    if embedded or name.startswith("timm:") or Path(name).exists() or not hub_offline():
        return embedded or name
    close = difflib.get_close_matches(name.lower(), EMBEDDED_BACKBONES, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownNameError(
        f"unknown model {name!r}{hint}; the hub is unreachable (HF_HUB_OFFLINE=1). Offline choices: "
        f"{', '.join(EMBEDDED_BACKBONES)}, timm:<name> with weights in the local cache, or a local path to a "
        "saved transformers model"
    )


def resolve_task(name: str) -> str:
    """`name` as `load_task` knows it (``tiny_text`` -> ``tiny-text``), or UnknownNameError."""
    embedded = _canonical(name, EMBEDDED_TASKS)
    if embedded or Path(name).exists() or not hub_offline():
        return embedded or name
    stand_in = _TASK_HINTS.get(name.lower())
    hint = f" ({stand_in!r} is the embedded set of that kind)" if stand_in else ""
    raise UnknownNameError(
        f"unknown dataset {name!r}{hint}; the hub is unreachable (HF_HUB_OFFLINE=1). Offline choices: "
        f"{', '.join(EMBEDDED_TASKS)}, or a local path that datasets.load_dataset reads"
    )


RECIPES_EXTRA = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}
"""Import name -> pip name of what the CLI and recipes need beyond the core (the `[recipes]` extra); the embedded
weights' packages are checked where they load (`skipcollapse.zoo.pretrained`)."""


def missing_recipes_extra() -> list[str]:
    """Pip names of the `[recipes]` extra's packages that are not installed."""
    import importlib.util

    return [pip for module, pip in RECIPES_EXTRA.items() if importlib.util.find_spec(module) is None]


def main_with_clean_errors(main: Callable[..., Any]) -> int:
    """Run a recipe's `main`: a bad name or setting ends with one line on stderr and status 2, no traceback."""
    try:
        main()
    except UnknownNameError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
