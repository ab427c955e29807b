"""Fine-tune a classifier with a SkipCollapse adapter through the transformers Trainer.

Offline defaults (real ImageNet weights, data shipped with scikit-learn):

    python recipes/finetune.py                                   # EfficientNet-Lite0 -> digits, ~1 min on 2 cores
    python recipes/finetune.py --model minilm --dataset tiny-text # MiniLM -> 4-topic sentences
    python recipes/finetune.py --k-shot 10 --seed 1              # few-shot: 10 images per class

Trains on the training split, evaluates on the validation split while training (progress bar, NC metrics with
--nc-callback) and on the test split once at the end; saves the adapter and result.json to --output-dir and
prints how to reload it.

Anything on the hub (online): `--model google/vit-base-patch16-224 --dataset cifar10 --image-column img`.
Several processes: `accelerate launch --multi_gpu --num_processes 2 recipes/finetune.py ...` (gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from skipcollapse import CollapseTrainer, NeuralCollapseCallback, SkipCollapseConfig, save_adapter_atomically
from skipcollapse._io import check_writable_folder, write_atomic
from skipcollapse.zoo import HelpFormatter, add_data_arguments, load_backbone, task_from_args
from skipcollapse.zoo.names import main_with_clean_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_data_arguments(p)
    p.add_argument("--source-layer", default=None, help="block name or index (None: the middle block)")
    p.add_argument("--fusion", default="add", choices=["add", "concat", "replace"], help="how the skip meets the head")
    p.add_argument(
        "--train-source",
        default="full",
        choices=["full", "norms_biases", "none"],
        help="what of block l trains (full = SCL-FT)",
    )
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (the comparison's budget)")
    p.add_argument("--epochs", type=float, default=None, help="train this many epochs instead of --steps")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step and process")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (cosine schedule, 10%% warmup)")
    p.add_argument("--collapse-lambda", type=float, default=0.0, help="> 0: train with the collapse-aware loss")
    p.add_argument("--nc-callback", action="store_true", help="log NC metrics of eval and 256 train examples")
    p.add_argument("--output-dir", default="runs/finetune", help="where the adapter and result.json go")
    p.add_argument("--report-to", default="none", help="Trainer logging backends, e.g. tensorboard (none: off)")
    p.add_argument("--verbose", action="store_true", help="show the libraries' info logs and warnings")
    args = p.parse_args(argv)
    if args.steps < 1 or (args.epochs is not None and args.epochs <= 0) or args.batch_size < 1 or args.lr <= 0:
        p.error("--steps, --epochs, --batch-size and --lr must be positive")
    if args.image_size is not None and args.image_size < 1:
        p.error(f"--image-size must be a positive integer, got {args.image_size}")
    try:
        check_writable_folder(args.output_dir)
    except ValueError as error:
        p.error(str(error))
    return args


def _source_layer(value: str | None) -> str | int | None:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def accuracy(prediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, -1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if not args.verbose:
        transformers.logging.set_verbosity_error()
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
    total_steps = args.steps if not args.epochs else math.ceil(args.epochs * len(train_set) / args.batch_size)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=-1 if args.epochs else args.steps,
        num_train_epochs=args.epochs or 1,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.1 * total_steps),
        weight_decay=0.0,
        eval_strategy="epoch" if args.epochs else "steps",
        eval_steps=max(1, args.steps // 5),
        logging_strategy="epoch" if args.epochs else "steps",
        logging_steps=max(1, args.steps // 5),
        save_strategy="no",
        report_to=args.report_to,
        seed=args.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the tasks' per-batch transform reads the raw columns
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),  # CPU-only processes train with DDP over gloo
    )
    common = dict(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=validation_set if validation_set is not None else test_set,
        data_collator=collator,
        compute_metrics=accuracy,
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
    model.peft_config["default"].base_model_name_or_path = args.model  # what the reload snippet loads
    if trainer.is_world_process_zero():  # no embedding layers to save; saying so spares peft a hub lookup of the name
        # atomically: a run killed while saving over an earlier run's adapter leaves that one whole, not a mix
        save_adapter_atomically(model, args.output_dir, save_embedding_layers=False)

    result = {
        "model": args.model,
        "dataset": args.dataset,
        "k_shot": args.k_shot,
        "seed": args.seed,
        "source_layer": model.peft_config["default"].source_layer,
        "fusion": args.fusion,
        "train_examples": len(train_set),
        "test_examples": len(test_set),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        "validation_examples": len(validation_set) if validation_set is not None else 0,
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "train_seconds": train_seconds,
        **{key: value for key, value in metrics.items() if "_nc" in key or "_cdnv" in key},
    }
    if trainer.is_world_process_zero():
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(args.output_dir) / "result.json", json.dumps(result, indent=2) + "\n")
        budget = f"{args.epochs:g} epochs" if args.epochs else f"{args.steps} steps"
        loss = f"CE + {args.collapse_lambda:g}·collapse penalty" if args.collapse_lambda > 0 else "cross-entropy"
        print(
            f"\n{args.model} -> {args.dataset} ({args.image_size}px): SCL-FT on {result['source_layer']} "
            f"({args.fusion}, train_source={args.train_source}), {loss}, lr {args.lr:g}, {budget} of batch "
            f"{args.batch_size}, world size {training_args.world_size}\n"
            f"trainable params: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)\n"
            f"test accuracy: {100 * result['test_accuracy']:.2f}% on {len(test_set)} held-out examples "
            f"(trained on {len(train_set)}, validated on {result['validation_examples']}, {train_seconds:.0f} s)\n"
            f"adapter and result.json saved to {args.output_dir}; reload with:\n"
            f"  from skipcollapse.zoo import load_backbone; from peft import PeftModel\n"
            f"  model = PeftModel.from_pretrained(load_backbone({args.model!r}, {task.num_labels}, "
            f"image_size={args.image_size}).model, {args.output_dir!r})"
        )
    return result


if __name__ == "__main__":
    sys.exit(main_with_clean_errors(main))
