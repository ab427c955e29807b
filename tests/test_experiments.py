"""The comparison protocol: fixed splits, selection on validation only, resumable cached search."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from harness import experiments as E
from skipcollapse.zoo import data as D
from skipcollapse.zoo import tasks as T
from skipcollapse.zoo.tasks import load_task


@pytest.mark.parametrize("name", ["digits", "tiny-text"])
def test_test_and_validation_splits_are_fixed_across_seeds_and_disjoint_from_training(name: str) -> None:
    few = [load_task(name, k_shot=5, seed=seed) for seed in (0, 1, 2)]
    full = load_task(name)
    column = few[0].modality
    rows = lambda table: [_row(x) for x in table[column]]  # noqa: E731
    for task in few[1:] + [full]:
        assert rows(task.test) == rows(few[0].test) and torch.equal(task.labels("test"), few[0].labels("test"))
        assert rows(task.validation) == rows(few[0].validation)
        assert torch.equal(task.labels("validation"), few[0].labels("validation"))
    assert rows(few[0].train) != rows(few[1].train)  # the seed redraws the k-shot set only
    assert torch.bincount(few[0].labels("validation")).tolist() == [20] * few[0].num_labels
    assert torch.bincount(few[0].labels("train")).tolist() == [5] * few[0].num_labels
    train, val, test = (set(rows(getattr(full, split))) for split in ("train", "validation", "test"))
    if name == "digits":  # the three splits partition the 1,797 images (a few digits repeat pixel for pixel)
        assert len(full.train) + len(full.validation) + len(full.test) == 1797
    else:  # sentences are distinct by construction, so membership is identity
        assert not (train & val) and not (train & test) and not (val & test)
    assert set(rows(few[0].train)) <= train  # k-shot draws from the training pool only


def _row(x) -> object:
    return x if isinstance(x, str) else tuple(torch.as_tensor(x).flatten().tolist())


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
        search_space={
            "linear-probe": {"learning_rate": [1e-3, 1e-2]},
            "scl-ft": {
                "learning_rate": [1e-3],
                "source_layer": [E.NC1_BLOCK, "timm_model.blocks.2.1", "timm_model.blocks.5.3"],
            },
        },
        search_seed=7,
        path=tmp_path / "experiment.json",
    )
    experiment.save()
    return experiment


def test_search_reads_validation_only_then_resumes_without_training(tiny_experiment, tmp_path, monkeypatch) -> None:
    real_load_task = T.load_task

    def without_test(*args, **kwargs):
        task = real_load_task(*args, **kwargs)
        task.test = _Untouchable()
        return task

    monkeypatch.setattr(T, "load_task", without_test)
    trained = []

    def counting_run(setting, spec):
        trained.append(spec)
        return E.run(setting, spec)

    cache = E.ResultCache(tmp_path / "cache")
    chosen = E.search(tiny_experiment, cache, runner=counting_run)
    # the same effort for both: 2 learning rates for the probe, 2 blocks (the NC1 one and one other) for SCL-FT
    assert len(trained) == 4 and not any(spec.evaluate_test for spec in trained)
    assert {spec.seed for spec in trained} == {7}  # the search seed, never a test seed
    assert set(chosen["4"]) == {"linear-probe", "scl-ft"}
    scl = chosen["4"]["scl-ft"]
    blocks = [g["source_layer"] for g in scl["grid"]]
    assert scl["configurations"] == chosen["4"]["linear-probe"]["configurations"] == 2
    assert blocks[0] == scl["nc1_source_layer"] and len(set(blocks)) == 2 and scl["source_layer"] in blocks
    assert scl["nc1_choice"]["source_layer"] == scl["nc1_source_layer"]
    saved = json.loads(tiny_experiment.path.read_text())["chosen"]
    assert saved["4"]["linear-probe"]["learning_rate"] == chosen["4"]["linear-probe"]["learning_rate"]
    runs = [json.loads(f.read_text()) for f in (tmp_path / "cache").glob("*.json")]
    runs = [r for r in runs if "method" in r]  # (the probe's file is the other one)
    assert len(runs) == 4 and all(r["cpu"] and r["threads"] == torch.get_num_threads() for r in runs)

    # the poisoned test split is really poisonous: a test run of the chosen configuration reads it and fails
    label, spec = E.final_specs(tiny_experiment, "4", "linear-probe", [0])[0]
    with pytest.raises(AssertionError, match="touched the test split"):
        E.cached_run(tiny_experiment.setting, spec, cache, counting_run)

    # a repeated (or resumed) search trains nothing: every configuration comes from the cache
    trained.clear()
    again = E.search(E.Experiment.load(tiny_experiment.path), cache, runner=counting_run)
    assert trained == [] and again["4"]["scl-ft"]["source_layer"] == scl["source_layer"]

    # the choices hold only for what they were made for: another budget in the file refuses them
    changed = E.Experiment.load(tiny_experiment.path)
    changed.setting = dataclasses.replace(changed.setting, steps=8)
    with pytest.raises(KeyError, match="made for another setting"):
        E.final_specs(changed, "4", "scl-ft", [0])
    with pytest.raises(ValueError, match="search seed"):
        E.final_specs(
            again_experiment := E.Experiment.load(tiny_experiment.path), "4", "scl-ft", [again_experiment.search_seed]
        )


def test_searches_side_by_side_on_one_file_keep_each_others_choices(tiny_experiment) -> None:
    # two processes' views of one file, each searching another shots setting and saving as it goes
    full, few = E.Experiment.load(tiny_experiment.path), E.Experiment.load(tiny_experiment.path)
    full.record("full", "linear-probe", {"learning_rate": 0.1})
    few.record("4", "linear-probe", {"learning_rate": 0.01})
    full.record("full", "scl-ft", {"learning_rate": 0.001})
    saved = json.loads(tiny_experiment.path.read_text())["chosen"]
    assert saved == {
        "full": {"linear-probe": {"learning_rate": 0.1}, "scl-ft": {"learning_rate": 0.001}},
        "4": {"linear-probe": {"learning_rate": 0.01}},
    }


def test_cache_key_separates_settings_and_hyper_parameters() -> None:
    spec = E.RunSpec("scl-ft", "full", 0, 1e-3, source_layer="a")
    setting = E.Setting()
    keys = {
        spec.key(setting),
        dataclasses.replace(spec, learning_rate=3e-3).key(setting),
        dataclasses.replace(spec, seed=1).key(setting),
        spec.key(dataclasses.replace(setting, steps=101)),
        dataclasses.replace(spec, evaluate_test=True).key(setting),
        dataclasses.replace(spec, weight_decay=0.05).key(setting),
    }
    threads = torch.get_num_threads()
    try:  # another thread count orders float sums differently: another result, never a cache hit
        torch.set_num_threads(threads + 1)
        keys.add(spec.key(setting))
    finally:
        torch.set_num_threads(threads)
    assert len(keys) == 7 and spec.key(setting) == E.RunSpec("scl-ft", "full", 0, 1e-3, source_layer="a").key(setting)


def test_cache_key_carries_the_split_rules_of_grouped_tasks(monkeypatch) -> None:
    # a grouped task whose splits are drawn by another rule version is another result, never a stale hit
    spec, setting = E.RunSpec("scl-ft", "full", 0, 1e-3, source_layer="a"), E.Setting(dataset="tiny-text")
    plain = spec.key(setting)  # an ungrouped task: no rule enters its key, so its committed results keep theirs
    assert E._split_rules(setting) == () and plain == _key_without_split_rules(spec, setting)
    grouped = E.Setting(dataset="tiny-text", steps=7)
    before = spec.key(grouped)
    E._split_rules.cache_clear()
    real = T.load_task

    def load_grouped(*args, **kwargs):
        task = real(*args, **kwargs)
        task.split_rules = {"grouped_splits": D.GROUPED_SPLITS}
        return task

    monkeypatch.setattr(T, "load_task", load_grouped)
    try:
        after = spec.key(grouped)
    finally:
        E._split_rules.cache_clear()
    assert after != before and before == _key_without_split_rules(spec, grouped)


def _key_without_split_rules(spec, setting) -> str:
    identity = [E.PROTOCOL, dataclasses.asdict(setting), dataclasses.asdict(spec), torch.get_num_threads()]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


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
    import compare  # the recipe answers the same with one line, no traceback

    with pytest.raises(SystemExit, match=r"^error: no experiment file .* recipes/experiments"):
        compare.main(["--experiment", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit, match=r"^error: .*unknown methods \['lorra'\]"):
        compare.main(["--experiment", str(path)])
    experiment = E.Experiment(E.Setting(), ["full"], [0], {"lora": {"learning_rate": [1e-3]}}, search_seed=1)
    with pytest.raises(KeyError, match="run the search first"):
        experiment.choice("full", "lora")
    path.write_text(
        json.dumps({"setting": {}, "shots": ["full"], "seeds": [0, 1], "search_space": {}, "search_seed": 1})
    )
    with pytest.raises(ValueError, match="search_seed 1 is also a test seed"):
        E.Experiment.load(path)


@pytest.mark.parametrize("path", sorted(E.Path(__file__).parents[1].glob("recipes/experiments/*.json")), ids=str)
def test_shipped_experiments_give_every_method_the_same_search_effort(path) -> None:
    experiment = E.Experiment.load(path)
    efforts = {m: len(E.search_grid(experiment, m, "some.nc1.block")) for m in experiment.search_space}
    assert len(set(efforts.values())) == 1, efforts
    assert experiment.search_seed not in experiment.seeds and len(experiment.seeds) >= 3
