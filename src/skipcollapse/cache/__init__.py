"""Cache the frozen prefix: run blocks 1..ℓ-1 once, then train SCL-FT from what block ℓ receives.

Everything before the source block ℓ is frozen, so on a fixed (un-augmented) training set its outputs are the same
every epoch. Recomputing them each epoch is most of an SCL-FT epoch on a CNN (the early, high-resolution blocks
cost the most), so `build_prefix_cache` runs the model once, in eval mode without gradients (a plain forward to
its end: nothing is stopped early by an exception), and stores the
*inputs of block ℓ*: every tensor argument the model passes to the block (hidden states, and e.g. a BERT
attention mask), concatenated over examples, plus the labels. `CachedSkipModel` then trains the very modules of
the PeftModel from those inputs:

    cache = build_prefix_cache(peft_model, train_set)             # one pass over the data, no gradients
    model = CachedSkipModel(peft_model, cache)                    # shares peft_model's modules
    Trainer(model=model, train_dataset=cache.dataset(), ...).train()
    model.save_pretrained("adapter")                              # = peft_model.save_pretrained

What the cache stores, and where. Block ℓ's arguments are sorted, from the first batch, into three kinds: a
tensor with one row per example (stored, ``[N, ...]``), a tensor that is the same for every batch (stored once),
and a non-tensor value such as ``None`` or a flag (stored once). In memory, each per-example argument is one
preallocated tensor. With ``directory=``, each is a raw file mapped with ``torch.from_file`` (written through a
shared mapping while building; read through a private, lazily paged mapping), so a cache larger than RAM works,
every torch dtype (bfloat16 included, which numpy's memmap lacks) round-trips bit for bit, and only the rows a
batch asks for are read. ``meta.json`` (the key, shapes and dtypes) is written last, so an interrupted build
leaves no cache that could be mistaken for a complete one.

When a cache is stale. A cache is keyed to what produced it: the base model's class, the source layer, the
adapter-config fields that bear on block ℓ's inputs (`KEY_CONFIG_FIELDS`), a SHA-256 over the parameters and
buffers of every module that runs before block ℓ (recorded while building), and the data (its length and a hash
of every example, inputs and labels, taken while building; checking a cache against a dataset reads it once).
`PrefixCache.check` names whatever differs and says how to rebuild; loading from a directory whose key differs refuses.
The other config fields (fusion, pooling, projection, what of the
block trains) act after the cached point, so one cache serves add, concat and replace adapters on the same layer.
Data whose examples change from one access to the next (random augmentation) is refused outright: the build
reads every example twice and compares. On disk, a cache is built in a temporary folder beside the target and
published by one rename, under a file lock: a second builder of the same folder waits, then reuses the finished
cache; an interrupted build leaves nothing that looks like a cache. The files are allocated before they are
mapped, so a full disk is a clear error, not a SIGBUS.

When training from the cache equals training without it. With the same initial adapter, seed and batch order,
the numbers match to float tolerance (different batchings of the build pass may change the last bits of the
prefix's convolutions). Two things in the uncached run would break equality, both documented here rather than
hidden: dropout or stochastic depth *in the prefix* (in train mode it perturbs the block's input each step, while
the cache holds eval-mode outputs; `build_prefix_cache` warns when it finds any), and a prefix that trains
(refused). Frozen BatchNorm is in eval mode in both runs (the adapter keeps it so), and the tuned block copy sees
exactly the same batches, so its batch statistics match. Dropout after block ℓ runs in both runs alike.
"""

from .build import build_prefix_cache
from .key import KEY_CONFIG_FIELDS
from .model import CACHED_SUFFIX_FAMILIES, CachedSkipModel, suffix_runner
from .store import CachedPrefixDataset, PrefixCache

__all__ = [
    "CACHED_SUFFIX_FAMILIES",
    "KEY_CONFIG_FIELDS",
    "CachedPrefixDataset",
    "CachedSkipModel",
    "PrefixCache",
    "build_prefix_cache",
    "suffix_runner",
]
