"""The comparison harness behind the recipes and benchmarks: recipe code, not part of the installed package.

* `experiments`: the protocol (splits, search on validation, final test runs, cached per configuration).
* `methods`: the baselines' setups (linear probe, full FT, LoRA, Layer FT) beside SCL-FT, on the same backbone.
* `profiling`: peak memory the way the benchmarks report it.

It lives beside the recipes, as peft keeps its `method_comparison/` outside `src/`: the package keeps what its
users and CLI need (the adapter, the metrics, named offline backbones and tasks). Scripts in `recipes/` import it
as `harness`; the benchmarks and the tests put `recipes/` on the import path.
"""
