"""The adapted model under the real transformers Trainer: no label_names needed, eval loss and metrics appear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import build, logits_of, make_inputs, training_args
from transformers import Trainer

from skipcollapse import SkipCollapseConfig


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, family: str, n: int = 24) -> None:
        self.items = make_inputs(family, batch=n, seed=3)

    def __len__(self) -> int:
        return len(self.items["labels"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.items.items()}


def _accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


@pytest.mark.parametrize("family,fusion", [("hf-vit", "add"), ("hf-resnet", "replace"), ("hf-bert", "concat")])
def test_trainer_trains_evaluates_and_saves(family: str, fusion: str, tmp_path) -> None:
    model = get_peft_model(build(family), SkipCollapseConfig(fusion=fusion))
    args = training_args(tmp_path / "run", max_steps=4)
    data = _Dicts(family)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, compute_metrics=_accuracy)
    trainer.train()
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and np.isfinite(metrics["eval_loss"])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert any("loss" in entry for entry in trainer.state.log_history)

    trainer.save_model(str(tmp_path / "adapter"))
    inputs = make_inputs(family, seed=9)
    model.eval()
    with torch.no_grad():
        expected = logits_of(model, inputs)
        reloaded = PeftModel.from_pretrained(build(family), tmp_path / "adapter").eval()
        torch.testing.assert_close(logits_of(reloaded, inputs), expected, rtol=0, atol=0)


# --- saving over an earlier adapter: save_adapter_atomically ------------------------------------

KILLED_SAVE = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import torch
from tiny_models import build
from peft import get_peft_model
from skipcollapse import SkipCollapseConfig, save_adapter_atomically

target, kill_at, saver = os.path.realpath(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.manual_seed(0)
model = get_peft_model(build("hf-vit"), SkipCollapseConfig(fusion="concat"))  # another head shape than the old one
with torch.no_grad():
    for p in model.parameters():
        if p.requires_grad:
            p.add_(1.0)

def kill(event, args):
    if (
        (
            kill_at == "config"
            and event == "open"
            and isinstance(args[0], str)
            and args[0].endswith("adapter_config.json")
            and "w" in str(args[1])
        )  # the weights are written, the config not yet
        or (kill_at == "swap" and event == "os.rename" and os.path.realpath(args[1]) == target)  # between the renames
        or (kill_at == "cleanup" and event == "shutil.rmtree")  # the new one is in place, the old one not deleted
    ):
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(kill)
save_adapter_atomically(model, target) if saver == "atomic" else model.save_pretrained(target)
"""


def _perturbed_vit(fusion: str) -> PeftModel:
    torch.manual_seed(0)
    model = get_peft_model(build("hf-vit"), SkipCollapseConfig(fusion=fusion))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    return model.eval()


def _reloaded_logits(folder) -> torch.Tensor:
    torch.manual_seed(0)  # the same base weights as _perturbed_vit and the killed process
    model = PeftModel.from_pretrained(build("hf-vit"), folder).eval()
    with torch.no_grad():
        return logits_of(model, make_inputs("hf-vit", seed=9))


def _killed_save(target, kill_at: str, saver: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, tests, str(target), kill_at, saver],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-3000:]  # SIGKILL: no except or finally block ran


@pytest.mark.parametrize("kill_at", ["config", "swap", "cleanup"])
def test_a_killed_save_adapter_atomically_leaves_a_whole_adapter(kill_at: str, tmp_path) -> None:
    """A process saving a new adapter over an earlier one is killed (SIGKILL, for real) at three points: the earlier
    adapter, or after the swap the new one, loads whole; the folder's other files survive; a swap cut between its
    two renames is completed by finish_interrupted_save (which the next save_adapter_atomically calls first)."""
    from skipcollapse import save_adapter_atomically
    from skipcollapse._io import finish_interrupted_save

    old = _perturbed_vit("add")
    with torch.no_grad():
        expected_old = logits_of(old, make_inputs("hf-vit", seed=9))
    target = tmp_path / "adapter"
    save_adapter_atomically(old, target)
    (target / "result.json").write_text("{}\n")
    (target / "runs").mkdir()
    (target / "runs" / "events").write_text("logged\n")

    _killed_save(target, kill_at, "atomic")
    finish_interrupted_save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # nothing left beside it
    assert (target / "result.json").read_text() == "{}\n" and (target / "runs" / "events").read_text() == "logged\n"
    fusion = PeftModel.from_pretrained(build("hf-vit"), target).peft_config["default"].fusion
    if kill_at == "config":  # before the swap: the old adapter, unchanged
        assert fusion == "add"
        torch.testing.assert_close(_reloaded_logits(target), expected_old, rtol=0, atol=0)
    else:  # the new adapter was whole before the old one was moved aside
        assert fusion == "concat"

    # ...while the same kill during a plain save_pretrained over the old adapter leaves new weights under the old
    # config, which no longer loads
    plain = tmp_path / "plain"
    old.save_pretrained(plain)
    if kill_at == "config":
        _killed_save(plain, kill_at, "plain")
        with pytest.raises(Exception):
            PeftModel.from_pretrained(build("hf-vit"), plain)


def test_an_exception_during_save_adapter_atomically_keeps_the_earlier_adapter(tmp_path) -> None:
    """save_pretrained fails midway (a state-dict hook on the real model raises after peft wrote its model card): the
    exception reaches the caller, the earlier adapter is untouched and no temporary folder is left."""
    from skipcollapse import save_adapter_atomically

    old = _perturbed_vit("add")
    with torch.no_grad():
        expected = logits_of(old, make_inputs("hf-vit", seed=9))
    target = tmp_path / "adapter"
    save_adapter_atomically(old, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    new = _perturbed_vit("concat")

    def interrupt(*_):
        raise KeyboardInterrupt

    new.register_state_dict_post_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_adapter_atomically(new, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    torch.testing.assert_close(_reloaded_logits(target), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="wrote nothing.*main process only"):
        save_adapter_atomically(old, target, is_main_process=False)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
