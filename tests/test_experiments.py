"""The comparison protocol: fixed splits, selection on validation only, resumable cached search."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness import experiments as E
from skipcollapse.zoo import tasks as T
from skipcollapse.zoo.tasks import load_task


@pytest.mark.parametrize("name", ["digits", "tiny-text"])
def test_test_and_validation_splits_are_fixed_across_seeds_and_disjoint_from_training(name: str) -> None:
    few = [load_task(name, k_shot=5, seed=seed) for seed in (0, 1, 2)]
    full = load_task(name)
    for task in few[1:] + [full]:
        assert _same(task.test_inputs, few[0].test_inputs) and torch.equal(task.test_labels, few[0].test_labels)
        assert _same(task.validation_inputs, few[0].validation_inputs)
        assert torch.equal(task.validation_labels, few[0].validation_labels)
    assert not _same(few[0].train_inputs, few[1].train_inputs)  # the seed redraws the k-shot set only
    assert torch.bincount(few[0].validation_labels).tolist() == [20] * few[0].num_labels
    assert torch.bincount(few[0].train_labels).tolist() == [5] * few[0].num_labels
    if name == "tiny-text":  # sentences are distinct by construction, so membership is identity
        train, val, test = (set(x) for x in (full.train_inputs, full.validation_inputs, full.test_inputs))
        assert not (train & val) and not (train & test) and not (val & test)
    else:  # digits: the three splits partition the 1,797 images
        assert len(full.train_labels) + len(full.validation_labels) + len(full.test_labels) == 1797
        rows = lambda x: {tuple(r.flatten().tolist()) for r in x}  # noqa: E731
        k_shot_rows = rows(few[0].train_inputs)
        assert k_shot_rows <= rows(full.train_inputs)  # k-shot draws from the training pool only


def _same(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else list(a) == list(b)


def test_selection_refuses_results_that_carry_test_numbers() -> None:
    ok = {"validation_accuracy": 0.5, "validation_cross_entropy": 1.0}
    assert E.select([ok, {**ok, "validation_accuracy": 0.6}])["validation_accuracy"] == 0.6
    assert E.select([ok, {**ok, "validation_cross_entropy": 0.5}])["validation_cross_entropy"] == 0.5  # tie-break
    with pytest.raises(ValueError, match="validation only"):
        E.select([ok, {**ok, "test_accuracy": 0.9}])


class _Untouchable:
    """Stands in for the test split: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the search touched the test split ({name})")

    def __len__(self):
        raise AssertionError("the search touched the test split (len)")

    def __getitem__(self, index):
        raise AssertionError("the search touched the test split (getitem)")


@pytest.fixture
def tiny_experiment(tmp_path):
    setting = E.Setting(image_size=16, steps=2, batch_size=16, eval_every=1, validation_per_class=3)
    experiment = E.Experiment(
        setting=setting,
        shots=["4"],
        seeds=[0, 1],
        search_space={"linear-probe": {"learning_rate": [1e-3, 1e-2]}, "scl-ft": {"learning_rate": [1e-3]}},
        source_candidates=["timm_model.blocks.2.1", "timm_model.blocks.5.3"],
        path=tmp_path / "experiment.json",
    )
    experiment.save()
    return experiment


def test_search_reads_validation_only_then_resumes_without_training(tiny_experiment, tmp_path, monkeypatch) -> None:
    real_load_task = T.load_task

    def without_test(*args, **kwargs):
        task = real_load_task(*args, **kwargs)
        task.test_inputs = task.test_labels = _Untouchable()
        return task

    monkeypatch.setattr(T, "load_task", without_test)
    trained = []

    def counting_run(setting, spec):
        trained.append(spec)
        return E.run(setting, spec)

    cache = E.ResultCache(tmp_path / "cache")
    chosen = E.search(tiny_experiment, cache, runner=counting_run)
    # 2 learning rates for the probe, 1 for SCL-FT on the NC1 block plus the other candidate block(s)
    assert 4 <= len(trained) <= 5 and not any(spec.evaluate_test for spec in trained)
    assert set(chosen["4"]) == {"linear-probe", "scl-ft"}
    scl = chosen["4"]["scl-ft"]
    assert scl["source_layer"] in scl["blocks"] and scl["nc1_source_layer"] in scl["blocks"]
    saved = json.loads(tiny_experiment.path.read_text())["chosen"]
    assert saved["4"]["linear-probe"]["learning_rate"] == chosen["4"]["linear-probe"]["learning_rate"]

    # the poisoned test split is really poisonous: a test run of the chosen configuration reads it and fails
    label, spec = E.final_specs(tiny_experiment, "4", "linear-probe", [0])[0]
    with pytest.raises(AssertionError, match="touched the test split"):
        E.cached_run(tiny_experiment.setting, spec, cache, counting_run)

    # a repeated (or resumed) search trains nothing: every configuration comes from the cache
    trained.clear()
    again = E.search(E.Experiment.load(tiny_experiment.path), cache, runner=counting_run)
    assert trained == [] and again["4"]["scl-ft"]["source_layer"] == scl["source_layer"]


def test_cache_key_separates_settings_and_hyper_parameters() -> None:
    spec = E.RunSpec("scl-ft", "full", 0, 1e-3, source_layer="a")
    setting = E.Setting()
    keys = {
        spec.key(setting),
        dataclasses.replace(spec, learning_rate=3e-3).key(setting),
        dataclasses.replace(spec, seed=1).key(setting),
        spec.key(dataclasses.replace(setting, steps=101)),
        dataclasses.replace(spec, evaluate_test=True).key(setting),
    }
    assert len(keys) == 5 and spec.key(setting) == E.RunSpec("scl-ft", "full", 0, 1e-3, source_layer="a").key(setting)


def test_experiment_file_errors_name_the_problem(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {"setting": {}, "shots": ["full"], "seeds": [0], "search_space": {"lorra": {"learning_rate": [1e-3]}}}
        )
    )
    with pytest.raises(ValueError, match=r"unknown methods \['lorra'\]"):
        E.Experiment.load(path)
    with pytest.raises(FileNotFoundError, match="recipes/experiments"):
        E.Experiment.load(tmp_path / "missing.json")
    experiment = E.Experiment(E.Setting(), ["full"], [0], {"lora": {"learning_rate": [1e-3]}}, [])
    with pytest.raises(KeyError, match="run the search first"):
        experiment.choice("full", "lora")
