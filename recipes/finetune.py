"""Fine-tune a classifier with a SkipCollapse adapter through the transformers Trainer.

Offline defaults (real ImageNet weights, data shipped with scikit-learn):

    python recipes/finetune.py                                   # EfficientNet-Lite0 -> digits
    python recipes/finetune.py --model minilm --dataset tiny-text # MiniLM -> 4-topic sentences
    python recipes/finetune.py --k-shot 10 --seed 1              # few-shot: 10 images per class

Anything on the hub (online): `--model google/vit-base-patch16-224 --dataset cifar10 --image-column img`.
Several processes: `accelerate launch --multi_gpu --num_processes 2 recipes/finetune.py ...` (gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from skipcollapse import CollapseTrainer, NeuralCollapseCallback, SkipCollapseConfig
from skipcollapse.zoo import add_data_arguments, load_backbone, task_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p, image_size=64)
    p.add_argument("--source-layer", default=None, help="block name or index (default: the middle block)")
    p.add_argument("--fusion", default="add", choices=["add", "concat", "replace"])
    p.add_argument("--train-source", default="full", choices=["full", "norms_biases", "none"])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--collapse-lambda", type=float, default=0.0, help="> 0: train with the collapse-aware loss")
    p.add_argument("--nc-callback", action="store_true", help="log NC metrics of eval and 256 train examples")
    p.add_argument("--output-dir", default="runs/finetune")
    return p.parse_args(argv)


def _source_layer(value: str | None) -> str | int | None:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def accuracy(prediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, -1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    task = task_from_args(args)
    backbone = load_backbone(args.model, task.num_labels, image_size=args.image_size)
    train_set, validation_set, test_set = task.datasets(backbone)
    config = SkipCollapseConfig(
        source_layer=_source_layer(args.source_layer), fusion=args.fusion, train_source=args.train_source
    )
    model = get_peft_model(backbone.model, config)
    trainable, total = model.get_nb_trainable_parameters()

    collator = backbone.collator()
    training_args = TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size, learning_rate=args.lr, lr_scheduler_type="cosine",
        weight_decay=0.0, eval_strategy="epoch", save_strategy="no", logging_strategy="epoch",
        report_to=[], seed=args.seed, dataloader_num_workers=0, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),  # CPU-only processes train with DDP over gloo
    )
    common = dict(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=validation_set if validation_set is not None else test_set,
        data_collator=collator, compute_metrics=accuracy,
    )
    if args.collapse_lambda > 0:
        trainer = CollapseTrainer(**common, collapse_lambda=args.collapse_lambda, num_classes=task.num_labels)
    else:
        trainer = Trainer(**common)
    if args.nc_callback:
        subset = torch.utils.data.Subset(train_set, range(min(256, len(train_set))))
        trainer.add_callback(NeuralCollapseCallback(trainer, train_dataset=subset, num_classes=task.num_labels))
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate(test_set, metric_key_prefix="test")  # test read once, after training
    trainer.save_model(args.output_dir)

    result = {
        "model": args.model, "dataset": args.dataset, "k_shot": args.k_shot, "seed": args.seed,
        "source_layer": model.peft_config["default"].source_layer, "fusion": args.fusion,
        "train_examples": len(train_set), "test_examples": len(test_set),
        "trainable_params": trainable, "total_params": total, "trainable_share": trainable / total,
        "validation_examples": len(validation_set) if validation_set is not None else 0,
        "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"], "train_seconds": train_seconds,
        **{key: value for key, value in metrics.items() if "_nc" in key or "_cdnv" in key},
    }
    if trainer.is_world_process_zero():
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "result.json").write_text(json.dumps(result, indent=2))
        print(
            f"{args.model} -> {args.dataset}: SCL-FT on {result['source_layer']} ({args.fusion}), "
            f"world size {training_args.world_size}\n"
            f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)\n"
            f"test accuracy: {100 * result['test_accuracy']:.2f}% on {len(test_set)} held-out examples "
            f"(trained on {len(train_set)} for {args.epochs:g} epochs in {train_seconds:.0f} s)\n"
            f"adapter saved to {args.output_dir}"
        )
    return result


if __name__ == "__main__":
    main()
