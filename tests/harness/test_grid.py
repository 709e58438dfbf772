"""Grid files and flags expand to the expected run specs."""

from __future__ import annotations

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


def test_run_key_ignores_where_the_data_is(tiny_model):
    a = make_grid(tasks="rte", presets="lora", model=tiny_model, glue_dir="/a").specs()[0]
    b = make_grid(tasks="rte", presets="lora", model=tiny_model, glue_dir="/b").specs()[0]
    c = make_grid(tasks="rte", presets="lora", model=tiny_model, lr=1e-3).specs()[0]
    assert a.key == b.key != c.key


def test_grid_needs_tasks_and_methods(tiny_model):
    with pytest.raises(UniPeltError, match="no methods"):
        make_grid(tasks="rte", model=tiny_model)
    with pytest.raises(UniPeltError, match="'data_seeds' must be a list of integers"):
        make_grid(tasks="rte", presets="lora", data_seeds="1,x")
