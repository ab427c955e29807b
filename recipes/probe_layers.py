"""Probe every block of a backbone for neural collapse on a task's training data, and name the block to tune.

    python recipes/probe_layers.py                                   # EfficientNet-Lite0 on digits, offline
    python recipes/probe_layers.py --model minilm --dataset tiny-text
    accelerate launch --multi_gpu --num_processes 2 recipes/probe_layers.py   # each process probes its shard

The same as the `skipcollapse probe` command (this script only calls it), kept here so the recipes folder
holds every step: probe -> finetune -> compare. Writes probe.csv, probe.json and probe.png to --output-dir.
"""

from __future__ import annotations

import sys

from skipcollapse.cli import main

if __name__ == "__main__":
    sys.exit(main(["probe", *sys.argv[1:]]))
