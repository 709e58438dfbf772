"""Grid files and flags expand to the expected run specs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from unipelt import DEFAULT_LEARNING_RATES, UniPeltError
from unipelt.harness import make_grid


def test_yaml_grid_with_per_method_lr_and_a_config_file(tmp_path, tiny_model):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lora-r4.json").write_text('{"methods": [{"method": "lora", "r": 4}]}')
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"tasks: [rte, cola]\npresets: [lora, adapter]\nconfigs: [configs/lora-r4.json]\nks: [100, all]\n"
        f"data_seeds: [111, 222]\nlr: {{lora: 0.001, lora-r4: 0.002}}\nmodel: {tiny_model}\n"
    )
    specs = make_grid(grid, data_seeds="333").specs()  # a flag overrides the file
    assert len(specs) == 2 * 3 * 2 * 1
    lrs = {s.method: s.lr for s in specs}
    assert lrs == {"lora": 1e-3, "adapter": DEFAULT_LEARNING_RATES["adapter"], "lora-r4": 2e-3}
    assert {s.k for s in specs} == {100, "all"} and {s.data_seed for s in specs} == {333}
    assert len({s.key for s in specs}) == len(specs)
    first = [(s.task, s.k, s.method) for s in specs[:3]]  # task → K → seed → method
    assert first == [("rte", 100, "lora"), ("rte", 100, "adapter"), ("rte", 100, "lora-r4")]


def test_a_config_file_is_never_taken_for_a_preset_or_another_config_of_its_name(tmp_path, tiny_model):
    """A config's file name is its method's name: a lora.yaml with r=64 took the lora preset's
    learning rate and shared its report row; two r.json in two folders shared one lr and one row."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "r.json").write_text(f'{{"methods": [{{"method": "lora", "r": {len(folder) + 3}}}]}}')
    (tmp_path / "a" / "lora.json").write_text('{"methods": [{"method": "lora", "r": 64}]}')
    (tmp_path / "b" / "lora.json").write_text('{"methods": [{"method": "lora"}]}')  # the preset itself
    with pytest.raises(UniPeltError, match="named like the preset 'lora' but holds another config"):
        make_grid(tasks="rte", configs=str(tmp_path / "a" / "lora.json"), model=tiny_model).specs()
    [spec] = make_grid(tasks="rte", configs=str(tmp_path / "b" / "lora.json"), model=tiny_model).specs()
    assert spec.lr == DEFAULT_LEARNING_RATES["lora"]
    with pytest.raises(UniPeltError, match="two methods of the grid are named 'r'"):
        make_grid(tasks="rte", configs=f"{tmp_path / 'a' / 'r.json'},{tmp_path / 'b' / 'r.json'}", model=tiny_model)
    config = str(tmp_path / "a" / "r.json")  # a preset or a file given twice is one method
    twice = make_grid(tasks="rte", presets="lora,lora", configs=f"{config},{config}", lr=1e-3, model=tiny_model)
    assert len({s.key for s in twice.specs()}) == 2


def test_a_grid_file_that_gives_one_setting_twice_is_refused(tmp_path, tiny_model):
    grid = tmp_path / "grid.yaml"
    for twice in ("k: [16]\nks: [32]", "data_seeds: [1]\ndata-seeds: [2]"):  # one of them was dropped
        grid.write_text(f"tasks: [rte]\npresets: [lora]\nmodel: {tiny_model}\n{twice}\n")
        with pytest.raises(UniPeltError, match="one setting: keep one"):
            make_grid(grid)


def test_run_key_ignores_where_the_data_is(tiny_model, glue_dir, monkeypatch):
    a = make_grid(tasks="rte", presets="lora", model=tiny_model, glue_dir="/a").specs()[0]
    b = make_grid(tasks="rte", presets="lora", model=tiny_model, glue_dir="/b").specs()[0]
    c = make_grid(tasks="rte", presets="lora", model=tiny_model, lr=1e-3).specs()[0]
    assert a.key == b.key != c.key
    monkeypatch.chdir(glue_dir.parent)  # a relative directory is stored absolute: report reads it from anywhere
    [relative] = make_grid(tasks="rte", presets="lora", model=tiny_model, glue_dir=glue_dir.name).specs()
    [absolute] = make_grid(tasks="rte", presets="lora", model=tiny_model, glue_dir=str(glue_dir.resolve())).specs()
    assert relative.glue_dir == absolute.glue_dir == str(glue_dir.resolve()) and relative.key == absolute.key


def test_a_whole_number_in_a_float_setting_is_the_same_run(tiny_model, tmp_path):
    """``alpha: 2`` in a config file is the preset's alpha 2.0, and ``lr=1`` is ``lr=1.0``: they
    had other run keys, so finished runs trained again and the report averaged both as seeds."""
    [preset] = make_grid(tasks="rte", presets="lora", model=tiny_model).specs()
    config = tmp_path / "lora.yaml"
    config.write_text("methods:\n- method: lora\n  r: 8\n  alpha: 2\n  dropout: 0\n")
    [from_file] = make_grid(tasks="rte", configs=str(config), model=tiny_model).specs()
    assert from_file.config == preset.config and from_file.key == preset.key
    assert replace(preset, lr=1).key == replace(preset, lr=1.0).key


def test_grid_needs_tasks_and_methods(tiny_model):
    with pytest.raises(UniPeltError, match="no methods"):
        make_grid(tasks="rte", model=tiny_model)
    with pytest.raises(UniPeltError, match="'data_seeds' must be a list of integers"):
        make_grid(tasks="rte", presets="lora", data_seeds="1,x")


def test_every_train_setting_is_a_sweep_flag_and_a_grid_key(tmp_path, tiny_model, glue_dir):
    """The settings come from RunSpec's fields: what train takes, sweep and grid files take."""
    from unipelt.cli import _parser
    from unipelt.harness.spec import SETTINGS

    actions = {
        name: {a.dest for a in _parser()._subparsers._group_actions[0].choices[name]._actions}
        for name in ("train", "sweep")
    }
    for f in SETTINGS:
        assert f.name in actions["train"] and (f.metadata["axis"] or f.name) in actions["sweep"]
    grid = tmp_path / "grid.toml"
    grid.write_text(
        f'tasks = ["rte"]\npresets = ["lora"]\nmodel = "{tiny_model}"\nglue_dir = "{glue_dir}"\n'
        "batch_size = 4\nmax_length = 64\nbf16 = true\n"
    )
    from_file = make_grid(grid).specs()[0]
    flags = dict(model=tiny_model, glue_dir=str(glue_dir), batch_size=4, max_length=64, bf16=True)
    from_flags = make_grid(tasks="rte", presets="lora", **flags)
    assert (from_file.batch_size, from_file.max_length, from_file.bf16) == (4, 64, True)
    assert from_flags.specs()[0].key == from_file.key != replace(from_file, bf16=False).key
    with pytest.raises(UniPeltError, match="bf16 must be true or false, got 1"):
        replace(from_file, bf16=1)  # RunSpec checks each field by its type
    with pytest.raises(UniPeltError, match="max-length must be a positive integer, got 0"):
        replace(from_file, max_length=0)
    grid.write_text('tasks = ["rte"]\npresets = ["lora"]\nbf16 = "yes"\n')
    with pytest.raises(UniPeltError, match="grid setting 'bf16' must be true or false, got 'yes'"):
        make_grid(grid)
