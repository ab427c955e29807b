"""One adapted model object called from several threads at once, as a thread-pool inference server does, and one
thread training while another evaluates: every call gets exactly what it gets alone."""

from __future__ import annotations

import threading

import pytest
import torch
from conformance_models import ARCHS_BY_NAME, forward_logits, make_inputs
from peft import get_peft_model
from torch import nn

from skipcollapse import SkipCollapseConfig

CALLS = 200
THREADS = 3


def _adapted(name: str, fusion: str) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    arch = ARCHS_BY_NAME[name]
    model = get_peft_model(arch.build(), SkipCollapseConfig(fusion=fusion)).eval()
    with torch.no_grad():
        for module in model.modules():
            gate = getattr(module, "skipcollapse_gate", None)
            if gate is not None and "default" in gate:
                gate["default"].weight.fill_(0.7)  # an open gate: the skip changes the logits
    pad = 2 if arch.kind in ("text", "decoder") else 0
    batches = [make_inputs(arch, batch=2 + i % 3, seed=i, pad=pad) for i in range(6)]  # distinct inputs and sizes
    return model, batches


@pytest.mark.parametrize("name,fusion", [("bert", "replace"), ("timm-resnet10t", "concat"), ("llama", "add")])
def test_concurrent_calls_of_one_model_give_the_single_thread_logits(name: str, fusion: str) -> None:
    model, batches = _adapted(name, fusion)
    with torch.no_grad():
        expected = [forward_logits(model, b) for b in batches]
    results: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def serve(worker: int) -> None:
        try:
            start.wait()
            with torch.no_grad():
                for call in range(CALLS):
                    index = (call + worker) % len(batches)
                    results[worker].append((index, forward_logits(model, batches[index])))
        except BaseException as error:  # reported below, with the thread's own traceback
            errors.append(error)

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    wrong = sum(not torch.equal(logits, expected[i]) for worker in results for i, logits in worker)
    assert sum(len(r) for r in results) == THREADS * CALLS
    assert wrong == 0, f"{wrong} of {THREADS * CALLS} concurrent calls gave other logits than a call alone"


def _train(model: nn.Module, batches: list[dict[str, torch.Tensor]], steps: int) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(steps):
        batch = batches[step % len(batches)]
        labels = torch.arange(next(iter(batch.values())).shape[0]) % 3
        optimizer.zero_grad()
        nn.functional.cross_entropy(forward_logits(model, batch), labels).backward()
        optimizer.step()


@pytest.mark.parametrize("fusion", ["add", "replace"])
def test_training_in_one_thread_while_another_evaluates_gives_the_single_thread_weights(fusion: str) -> None:
    alone, batches = _adapted("bert", fusion)  # eval mode in both threads: no dropout, nothing random
    _train(alone, batches, steps=20)
    model, _ = _adapted("bert", fusion)
    done = threading.Event()
    evaluated = []

    def evaluate() -> None:
        with torch.no_grad():
            while not done.is_set():
                evaluated.append(forward_logits(model, batches[len(evaluated) % len(batches)]).shape)

    evaluator = threading.Thread(target=evaluate)
    evaluator.start()
    try:
        _train(model, batches, steps=20)
    finally:
        done.set()
        evaluator.join()
    assert evaluated, "the evaluating thread never ran"
    trained = dict(model.named_parameters())
    for name, param in alone.named_parameters():
        assert torch.equal(param, trained[name]), f"{name} differs from the single-thread run"
