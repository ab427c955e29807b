"""Which classifiers get an adapter with no names given: SkipCollapse (every fusion) beside LoRA ("all-linear").

Prints the README's coverage table, one row per architecture of `tests/conformance_models.py` that
`tests/test_conformance.py` runs. For each, SkipCollapse is created with `SkipCollapseConfig(fusion=...)` and must give
the base logits at init (add, concat) and train one step (all three fusions); LoRA with `target_modules="all-linear"`
must inject, run and train one step. The conformance test checks much more for SkipCollapse (padding, save/reload,
one call of the source, widths); this table only says where each method works without names.

    python benchmarks/coverage.py            # about a minute on a 2-core CPU
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conformance_models import (  # noqa: E402
    ARCHS,  # noqa: E402
    Arch,
    forward_logits,
    make_inputs,
)
from test_conformance import FAST, NOT_COVERED  # noqa: E402

import skipcollapse  # noqa: E402


def _one_step(model: torch.nn.Module, arch: Arch) -> None:
    logits = forward_logits(model, make_inputs(arch, pad=2 if arch.kind in ("text", "decoder") else 0))
    torch.nn.functional.cross_entropy(logits, torch.arange(4) % 3).backward()


def skipcollapse_works(arch: Arch) -> str:
    for fusion in ("add", "concat", "replace"):
        base = arch.build()
        inputs = make_inputs(arch)
        expected = forward_logits(base, inputs).detach()
        try:
            model = get_peft_model(base, skipcollapse.SkipCollapseConfig(fusion=fusion))
        except ValueError as error:
            runs = re.search(r"runs (\d+) times in one forward", str(error))
            if runs:
                return f"refused (one layer runs {runs.group(1)}x per forward)"
            return "input size not declared" if "example batch" in str(error) else "names needed"
        with torch.no_grad():
            logits = forward_logits(model, inputs)
        if fusion != "replace" and not torch.allclose(logits, expected, rtol=1e-5, atol=1e-6):
            return f"{fusion}: logits at init differ"
        _one_step(model, arch)
    return "yes" if arch.name not in NOT_COVERED else "runs, not in the test (see NOT_COVERED)"


def lora_works(arch: Arch) -> str:
    try:
        model = get_peft_model(arch.build(), LoraConfig(target_modules="all-linear", r=4))
        _one_step(model, arch)
    except Exception as error:  # a row of the table, not control flow: report what LoRA said
        return f"no ({type(error).__name__})"
    return "yes"


def main() -> None:
    warnings.filterwarnings("ignore")
    rows = []
    for arch in FAST + [a for a in ARCHS if a.name in NOT_COVERED]:
        cls = type(arch.build()).__name__
        rows.append((arch.kind, arch.name, cls, skipcollapse_works(arch), lora_works(arch)))
    print("| kind | architecture | class | SkipCollapse, no names | LoRA all-linear |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sc = sum(r[3] == "yes" for r in rows)
    lora = sum(r[4] == "yes" for r in rows)
    print(
        f"\nSkipCollapse with no names, as the conformance test checks it: {sc} of {len(rows)}; "
        f"LoRA: {lora} of {len(rows)}"
    )


if __name__ == "__main__":
    main()
