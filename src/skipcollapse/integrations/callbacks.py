"""Watch neural collapse during training: NC metrics of the head's input at every evaluation.

`NeuralCollapseCallback` runs one streaming pass over the evaluation set (and optionally a fixed subset of the
training set), summing the per-class statistics over processes, and reports `eval_nc1`, `eval_cdnv`, ... (and
`train_nc1`, ...) next to the Trainer's own evaluation metrics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments, default_data_collator

from ..collapse.distributed import is_distributed
from ..collapse.features import HeadInputs, iterate_features, shard_loader, unwrap
from ..collapse.metrics import CollapseMetrics


class NeuralCollapseCallback(TrainerCallback):
    """Add NC metrics of the head-input features to each evaluation of a `transformers.Trainer`.

    Usage::

        trainer = Trainer(model=peft_model, args=args, train_dataset=train, eval_dataset=test)
        trainer.add_callback(NeuralCollapseCallback(trainer, train_dataset=Subset(train, range(512))))

    Args:
        trainer: the Trainer, so the metrics go through `trainer.log` and reach `report_to` backends and
            `state.log_history` like any metric. Without it they are added to the dict `trainer.evaluate()`
            returns and to the last `state.log_history` entry only (callbacks run after the Trainer logged).
        train_dataset: a fixed (sub)set of the training data to measure too (`train_*` keys); collapse on the
            training data is what Li et al. tie to transfer.
        num_classes: K; read from the model's config (`num_labels`) or head when not given.
        head_module: the head's name in the base model, for architectures not discovered automatically.
        nc4: also measure NC4, which needs a second pass over the data (the loader is read again; nothing is stored).
    """

    def __init__(
        self,
        trainer: Any = None,
        *,
        train_dataset: Dataset | None = None,
        num_classes: int | None = None,
        head_module: str | None = None,
        nc4: bool = True,
    ) -> None:
        self.trainer = trainer
        self.train_dataset = train_dataset
        self.num_classes = num_classes
        self.head_module = head_module
        self.nc4 = nc4

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Check the data before any step: NC metrics need labels, and finding out at the first evaluation would
        abort a run that has already trained."""
        sets = {"train_dataset": self.train_dataset}
        eval_data = getattr(self.trainer, "eval_dataset", None)
        sets["the Trainer's eval_dataset"] = (
            next(iter(eval_data.values())) if isinstance(eval_data, dict) else eval_data
        )
        for name, dataset in sets.items():
            if dataset is None or len(dataset) == 0:
                continue
            item = dataset[0]
            if isinstance(item, dict) and "labels" not in item and "label" not in item:
                raise ValueError(
                    f"NeuralCollapseCallback needs labelled examples, but {name} yields items with keys "
                    f"{sorted(item)} and no 'labels'; pass labelled data (or drop the callback)"
                )

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        model: Any = None,
        eval_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None or eval_dataloader is None:
            return
        broadcast_buffers_from_rank_zero(model)
        collate = getattr(self.trainer, "data_collator", None) or eval_dataloader.collate_fn or default_data_collator
        sets = {_metric_prefix(metrics): eval_dataloader.dataset}
        if self.train_dataset is not None:
            sets["train"] = self.train_dataset
        results: dict[str, float] = {}
        for prefix, dataset in sets.items():
            loader = shard_loader(
                dataset, args.per_device_eval_batch_size, collate, args.process_index, args.world_size
            )
            values = measure_collapse(model, loader, self.num_classes, self.head_module, nc4=self.nc4)
            results.update({f"{prefix}_{key}": value for key, value in values.items()})
        if self.trainer is not None:
            self.trainer.log(results)
        else:
            if state.log_history:
                state.log_history[-1].update(results)
        if metrics is not None:
            metrics.update(results)


def _metric_prefix(metrics: dict[str, float] | None) -> str:
    """The `metric_key_prefix` of this evaluation ("eval", or e.g. "test" for
    `trainer.evaluate(test, metric_key_prefix="test")`), read off the keys the Trainer wrote, so NC metrics of a test
    pass are not labelled as validation."""
    for key in metrics or {}:
        if key.endswith("_runtime"):
            return key[: -len("_runtime")]
    return "eval"


@torch.no_grad()
def broadcast_buffers_from_rank_zero(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics) before measuring.

    DDP broadcasts buffers at the start of each training forward, so after the last step every rank has updated
    its trained BatchNorm statistics with its own batch. Measuring then would mix slightly different models;
    rank 0's is the one that gets saved.
    """
    if not is_distributed():
        return
    for buffer in unwrap(model).buffers():
        if buffer.is_floating_point():
            torch.distributed.broadcast(buffer, src=0)


def measure_collapse(
    model: torch.nn.Module,
    loader: Any,
    num_classes: int | None = None,
    head_module: str | None = None,
    *,
    nc4: bool = True,
) -> dict[str, float]:
    """NC metrics of the head input over `loader` (summed over processes when distributed; collective then).

    NC4 needs the final class means, so it takes a second pass over `loader` (it must iterate the same data
    twice): memory stays one batch of features, whatever the size of the evaluation set.
    """
    model = unwrap(model)
    with HeadInputs(model, head_module) as capture:
        weight = capture.head_weight().detach()
        metrics = CollapseMetrics(num_classes or weight.shape[0], num_features=weight.shape[1])
        for features, _, labels in iterate_features(model, loader, capture):
            metrics.update(features, labels)
        if nc4:  # a second pass against the frozen class means: memory stays bounded by one batch
            metrics.begin_nc4_pass()
            for features, logits, _ in iterate_features(model, loader, capture):
                metrics.nc4_update(features, logits)
    return metrics.compute(head_weight=weight)
