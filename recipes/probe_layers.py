"""Which block should SCL-FT fine-tune? Measure neural collapse of every block on the downstream training data.

Offline defaults (real ImageNet weights, data shipped with scikit-learn):

    python recipes/probe_layers.py                                    # EfficientNet-Lite0 blocks on digits
    python recipes/probe_layers.py --model minilm --dataset tiny-text # MiniLM layers on 4-topic sentences
    python recipes/probe_layers.py --k-shot 10                        # what a 10-shot user would see

Several processes (each probes its shard, the statistics are summed, process 0 writes the files):

    accelerate launch --multi_gpu --num_processes 2 recipes/probe_layers.py
    accelerate launch --config_file recipes/accelerate/two_cpu_processes.yaml recipes/probe_layers.py
    torchrun --standalone --nproc_per_node 2 recipes/probe_layers.py

Lower NC1 = the block's pooled features already collapse the downstream classes more. The recommended block
(lowest NC1 among all blocks but the last) is printed as a `SkipCollapseConfig(source_layer=...)` value,
ready for recipes/finetune.py --source-layer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import DataCollatorWithPadding, default_data_collator

from skipcollapse.probe import LayerReport, probe_layers
from skipcollapse.zoo import add_data_arguments, load_backbone, task_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p, image_size=64)
    p.add_argument("--max-examples", type=int, default=None, help="probe a seeded random subset of this many examples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--output-dir", default="runs/probe")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> LayerReport:
    args = parse_args(argv)
    # Sets up torch.distributed when launched by accelerate/torchrun (gloo on CPU-only machines); a no-op otherwise.
    state = PartialState(cpu=not torch.cuda.is_available())
    task = task_from_args(args)
    backbone = load_backbone(args.model, task.num_labels, image_size=args.image_size)
    train_set, _ = task.datasets(backbone)  # collapse on the downstream *training* data is the score
    collator = default_data_collator if backbone.modality == "image" else DataCollatorWithPadding(backbone.tokenizer)

    report = probe_layers(
        backbone.model.to(state.device), train_set, task.num_labels, batch_size=args.batch_size,
        collate_fn=collator, max_examples=args.max_examples, scores=True, seed=args.seed,
    )
    if state.is_main_process:
        out = Path(args.output_dir)
        written = report.save(out, title=f"{args.model} on {args.dataset}")
        print(f"{args.model} on {args.dataset} (train split), {state.num_processes} process(es)")
        print(report)
        chosen = report.recommended
        if chosen is not None:
            print(f"fine-tune it: python recipes/finetune.py --model {args.model} --dataset {args.dataset} "
                  f"--source-layer {chosen.name}")
        print(f"wrote {', '.join(str(path) for path in written)}")
    return report


if __name__ == "__main__":
    main()
