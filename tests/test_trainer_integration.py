"""NC metrics and the collapse-aware loss inside the real transformers Trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from test_trainer import _Dicts
from tiny_models import build, make_inputs, training_args
from transformers import Trainer, TrainingArguments

from skipcollapse import (
    CollapseLossFunc,
    CollapseTrainer,
    HeadInputs,
    NeuralCollapseCallback,
    SkipCollapseConfig,
    collapse_metrics,
    collapse_penalty,
)

NC_KEYS = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangle", "nc2_etf_distance", "nc3", "nc4")


def _args(tmp_path, **overrides) -> TrainingArguments:
    return training_args(tmp_path, **overrides)


@pytest.mark.parametrize("adapted", [True, False])
def test_callback_logs_nc_metrics_that_match_a_direct_computation(adapted: bool, tmp_path) -> None:
    model = build("hf-vit")
    if adapted:
        model = get_peft_model(model, SkipCollapseConfig(fusion="concat"))
    data, train_subset = _Dicts("hf-vit", n=24), _Dicts("hf-vit", n=12)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=data, eval_dataset=data)
    trainer.add_callback(NeuralCollapseCallback(trainer, train_dataset=train_subset))
    trainer.train()
    metrics = trainer.evaluate()
    logged = [entry for entry in trainer.state.log_history if "eval_nc1" in entry]
    assert logged and all(f"eval_{k}" in logged[-1] and f"train_{k}" in logged[-1] for k in NC_KEYS)
    assert metrics["eval_nc1"] == logged[-1]["eval_nc1"]

    # the same number straight from the features of one forward pass over the evaluation set
    model.eval()
    batch = data.items
    with torch.no_grad():
        if adapted:
            with HeadInputs(model) as capture:
                logits = model(pixel_values=batch["pixel_values"]).logits
                features = capture.latest
            weight = model.get_base_model().classifier.skipcollapse_head_copy["default"].weight
        else:
            captured = {}
            hook = model.classifier.register_forward_pre_hook(lambda m, a: captured.update(z=a[0]))
            logits = model(pixel_values=batch["pixel_values"]).logits
            hook.remove()
            features, weight = captured["z"], model.classifier.weight
    direct = collapse_metrics(features, batch["labels"], 3, head_weight=weight, logits=logits)
    for key in NC_KEYS:
        assert metrics[f"eval_{key}"] == pytest.approx(direct[key], rel=1e-6, abs=1e-9), key


def test_collapse_loss_func_with_lambda_zero_is_cross_entropy(tmp_path) -> None:
    model = get_peft_model(build("hf-bert"), SkipCollapseConfig())
    loss_func = CollapseLossFunc(model, collapse_lambda=0.0)
    inputs = make_inputs("hf-bert")
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert torch.equal(loss_func(out, inputs["labels"]), F.cross_entropy(out.logits, inputs["labels"]))
    n = torch.tensor(12)
    expected = F.cross_entropy(out.logits, inputs["labels"], reduction="sum") / n
    assert torch.equal(loss_func(out, inputs["labels"], num_items_in_batch=n), expected)


def test_collapse_loss_func_adds_the_weighted_penalty_of_the_same_forward_pass() -> None:
    model = get_peft_model(build("hf-bert"), SkipCollapseConfig())
    loss_func = CollapseLossFunc(model, collapse_lambda=0.5)
    inputs = make_inputs("hf-bert")
    with HeadInputs(model) as capture:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        features = capture.latest
    labels = inputs["labels"]
    penalty = collapse_penalty(features, labels)
    assert penalty > 0
    loss = loss_func(out, labels, num_items_in_batch=torch.tensor(12))  # this micro-batch holds half the items
    expected = F.cross_entropy(out.logits, labels, reduction="sum") / 12 + 0.5 * (6 / 12) * penalty
    torch.testing.assert_close(loss, expected)


def _trained_params(tmp_path, batch: int, accumulation: int, lam: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    base = build("hf-bert")
    for module in base.modules():  # dropout would draw different masks for different micro-batch shapes
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model = get_peft_model(base, SkipCollapseConfig())
    args = _args(
        tmp_path,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1e-2,
        optim="sgd",
        lr_scheduler_type="constant",
        dataloader_drop_last=True,
    )
    trainer = CollapseTrainer(model=model, args=args, train_dataset=_Dicts("hf-bert", n=8), collapse_lambda=lam)
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_accumulation_matches_one_big_batch_for_the_cross_entropy(tmp_path) -> None:
    one = _trained_params(tmp_path / "a", batch=8, accumulation=1, lam=0.0)
    two = _trained_params(tmp_path / "b", batch=4, accumulation=2, lam=0.0)
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-6, msg=name)


def _penalty_after_training(tmp_path, lam: float) -> tuple[float, list[dict]]:
    torch.manual_seed(0)
    base = build("hf-vit")
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model = get_peft_model(base, SkipCollapseConfig())
    data = _Dicts("hf-vit", n=24)
    args = _args(tmp_path, per_device_train_batch_size=24, max_steps=20, learning_rate=1e-3)
    trainer = CollapseTrainer(model=model, args=args, train_dataset=data, collapse_lambda=lam)
    trainer.train()
    model.eval()
    with torch.no_grad():
        with HeadInputs(model) as capture:
            model(pixel_values=data.items["pixel_values"])
            penalty = collapse_penalty(capture.latest, data.items["labels"])
    return float(penalty), trainer.state.log_history


def test_collapse_trainer_logs_the_parts_and_lowers_the_penalty(tmp_path) -> None:
    with_penalty, history = _penalty_after_training(tmp_path / "a", lam=1.0)
    without, _ = _penalty_after_training(tmp_path / "b", lam=0.0)
    parts = [e for e in history if "collapse_penalty" in e]
    assert len(parts) == 20 and all("ce" in e for e in parts)
    assert with_penalty < 0.8 * without


def test_logged_parts_add_up_to_the_logged_loss_with_unequal_micro_batches(tmp_path) -> None:
    """12 examples, micro-batches of 8 and 4 in one accumulation window: the loss weights each micro-batch's penalty
    by its share of the items, and the logged parts must be weighted the same way."""
    lam = 0.7
    model = get_peft_model(build("hf-vit"), SkipCollapseConfig())
    args = _args(tmp_path, gradient_accumulation_steps=2, max_steps=1, learning_rate=0.0)
    trainer = CollapseTrainer(model=model, args=args, train_dataset=_Dicts("hf-vit", n=12), collapse_lambda=lam)
    trainer.train()
    logged = next(e for e in trainer.state.log_history if "collapse_penalty" in e)
    assert logged["loss"] == pytest.approx(logged["ce"] + lam * logged["collapse_penalty"], rel=1e-4)


def test_a_micro_batch_without_labelled_examples_does_not_turn_the_logged_parts_into_nan() -> None:
    model = get_peft_model(build("hf-vit"), SkipCollapseConfig())
    func = CollapseLossFunc(model, collapse_lambda=0.5, num_classes=3)
    inputs = make_inputs("hf-vit", batch=6)
    for labels in (inputs["labels"], torch.full_like(inputs["labels"], -100)):  # the second: nothing labelled
        outputs = model(pixel_values=inputs["pixel_values"])
        func(outputs, labels, num_items_in_batch=torch.tensor(6))
    parts = func.pop_parts()
    assert parts and all(value == value for value in parts.values())  # no NaN
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"])
    assert parts["ce"] == pytest.approx(F.cross_entropy(outputs.logits, inputs["labels"]).item(), rel=1e-5)


def test_geometric_complexity_regulariser_is_logged_and_trains(tmp_path) -> None:
    model = get_peft_model(build("hf-resnet"), SkipCollapseConfig())
    args = _args(tmp_path, max_steps=2)
    trainer = CollapseTrainer(
        model=model, args=args, train_dataset=_Dicts("hf-resnet"), collapse_lambda=0.1, gc_lambda=0.01
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "geometric_complexity" in e]
    assert logged and all(e["geometric_complexity"] > 0 for e in logged)


class _Unlabelled(_Dicts):
    def __getitem__(self, i: int) -> dict:
        return {k: v for k, v in super().__getitem__(i).items() if k != "labels"}


def test_callback_refuses_unlabelled_eval_data_before_the_first_step(tmp_path) -> None:
    model = get_peft_model(build("hf-vit"), SkipCollapseConfig())
    trainer = Trainer(
        model=model, args=_args(tmp_path), train_dataset=_Dicts("hf-vit"), eval_dataset=_Unlabelled("hf-vit")
    )
    trainer.add_callback(NeuralCollapseCallback(trainer))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="needs labelled examples.*eval_dataset"):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)  # no step ran


def test_trainer_activation_checkpointing_on_a_timm_model_checkpoints_its_blocks(tmp_path) -> None:
    """TrainingArguments(activation_checkpointing=True) reaches timm's own checkpointing through the PeftModel,
    and the adapter trains as without it."""
    from skipcollapse import TimmImageClassifier

    losses = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(TimmImageClassifier(build("timm-efficientnet")), SkipCollapseConfig())
        args = _args(tmp_path, activation_checkpointing=checkpointing, max_steps=2)
        data = _Dicts("timm-efficientnet", n=16)
        data.items["pixel_values"] = data.items.pop("x")  # the name TimmImageClassifier takes
        trainer = Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
        assert model.get_base_model().timm_model.grad_checkpointing is checkpointing
        losses.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def _first_logged(trainer) -> dict:
    return next(e for e in trainer.state.log_history if "loss" in e)


def _vit_without_dropout() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_peft_model(build("hf-vit"), SkipCollapseConfig())


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_collapse_trainer_applies_the_label_smoothing_of_the_training_arguments(tmp_path, lam: float) -> None:
    """label_smoothing_factor smooths the cross-entropy part exactly as the Trainer's own LabelSmoother smooths its
    loss (one batch of all 24 examples, no update: the same forward pass)."""
    data = _Dicts("hf-vit", n=24)
    args = dict(per_device_train_batch_size=24, max_steps=1, learning_rate=0.0, label_smoothing_factor=0.3)
    plain = Trainer(model=_vit_without_dropout(), args=_args(tmp_path / "plain", **args), train_dataset=data)
    plain.train()
    ours = CollapseTrainer(
        model=_vit_without_dropout(), args=_args(tmp_path / "ours", **args), train_dataset=data, collapse_lambda=lam
    )
    ours.train()
    smoothed, logged = _first_logged(plain)["loss"], _first_logged(ours)
    if lam:
        assert logged["ce"] == pytest.approx(smoothed, rel=1e-5)
        assert logged["loss"] == pytest.approx(smoothed + lam * logged["collapse_penalty"], rel=1e-5)
    else:
        assert logged["loss"] == pytest.approx(smoothed, rel=1e-5)


@pytest.mark.parametrize(
    "func",
    [
        lambda outputs, labels, num_items_in_batch=None: F.cross_entropy(outputs.logits, labels),
        "collapse_loss_func_without_smoothing",
    ],
)
def test_collapse_trainer_refuses_label_smoothing_that_the_given_loss_would_not_apply(tmp_path, func) -> None:
    model = _vit_without_dropout()
    if func == "collapse_loss_func_without_smoothing":
        func = CollapseLossFunc(model, collapse_lambda=0.5)
    with pytest.raises(ValueError, match=r"label_smoothing_factor=0.3\).*compute_loss_func.*label_smoothing_factor=0"):
        CollapseTrainer(
            model=model,
            args=_args(tmp_path, label_smoothing_factor=0.3),
            train_dataset=_Dicts("hf-vit"),
            compute_loss_func=func,
        )
    matching = CollapseLossFunc(model, collapse_lambda=0.5, label_smoothing=0.3)  # applies it: accepted
    CollapseTrainer(
        model=model,
        args=_args(tmp_path, label_smoothing_factor=0.3),
        train_dataset=_Dicts("hf-vit"),
        compute_loss_func=matching,
    )


def test_geometric_complexity_regulariser_works_with_a_users_compute_loss_func(tmp_path) -> None:
    """gc_lambda adds γ·GC to whatever loss the user's compute_loss_func returns, and logs GC (one batch of all 24
    examples, no update: the logged loss is the user's loss of that batch plus γ times the logged GC)."""
    calls = []

    def user_loss(outputs, labels, num_items_in_batch=None):
        calls.append(len(labels))
        return F.cross_entropy(outputs.logits, labels)

    torch.manual_seed(0)
    model = get_peft_model(build("hf-resnet"), SkipCollapseConfig())
    data = _Dicts("hf-resnet", n=24)
    args = _args(tmp_path, per_device_train_batch_size=24, max_steps=1, learning_rate=0.0)
    trainer = CollapseTrainer(model=model, args=args, train_dataset=data, gc_lambda=0.01, compute_loss_func=user_loss)
    trainer.train()
    assert trainer.compute_loss_func is user_loss and calls == [24]
    logged = _first_logged(trainer)
    assert logged["geometric_complexity"] > 0 and "collapse_penalty" not in logged
    model.train()
    with torch.no_grad():
        ce = F.cross_entropy(model(pixel_values=data.items["pixel_values"]).logits, data.items["labels"]).item()
    assert logged["loss"] == pytest.approx(ce + 0.01 * logged["geometric_complexity"], rel=1e-4)
