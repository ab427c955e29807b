"""The adapted model under the real transformers Trainer: no label_names needed, eval loss and metrics appear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import build, logits_of, make_inputs
from transformers import Trainer, TrainingArguments

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
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=4,
        learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, seed=0,
    )
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
