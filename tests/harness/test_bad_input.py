"""Every mistake gets one `unipelt: error: ...` line, exit status 2, and changes no file: bad
grid files and settings, models that cannot do the run, unreadable data, unusable stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import unipelt
from unipelt import cli
from unipelt.harness import runner
from unipelt.harness.store import Store

from .conftest import finished_record, train_argv


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """A run that is reached is recorded at once: these tests are about what comes before."""
    monkeypatch.setattr(runner, "run", finished_record)


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "s.sqlite"


def _error(capsys, argv: list[str], store: Path) -> str:
    """The one-line error of a bad command, which must leave the store as it found it."""
    before = store.read_bytes() if store.exists() else None
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("unipelt: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert (store.read_bytes() if store.exists() else None) == before
    return err.strip()


GRID = 'tasks = ["rte"]\npresets = ["lora"]\nk = [16]\ndev_size = 20\nmodel = "{model}"\nglue_dir = "{glue}"\n'


@pytest.mark.parametrize(
    "suffix, extra, message",
    [
        (".toml", "lr = 'fast'", "grid setting 'lr' must be a number, got 'fast'"),
        (".toml", "lr = [1]", "grid setting 'lr' must be a number, got [1]"),
        (".toml", "lr = {lroa = 1e-3}", "the lr table names ['lroa'], which are not methods of the grid (lora)"),
        (".toml", "data_seeds = [1.5]", "grid setting 'data_seeds' must be a list of integers, got 1.5"),
        (".toml", "data_seeds = [true]", "grid setting 'data_seeds' must be a list of integers, got True"),
        (".toml", "patience = true", "grid setting 'patience' must be an integer, got True"),
        (".toml", "model_seed = 'abc'", "grid setting 'model_seed' must be an integer, got 'abc'"),
        (".toml", "epochs = 2.5", "grid setting 'epochs' must be an integer, got 2.5"),
        (".toml", "k = [16.5]", "K must be a positive integer or 'all', got 16.5"),
    ],
)
def test_grid_settings_are_never_coerced(capsys, tiny_model, glue_dir, tmp_path, store, suffix, extra, message):
    grid = tmp_path / f"grid{suffix}"
    text = GRID.format(model=tiny_model, glue=glue_dir)
    key = extra.split(" =")[0]
    grid.write_text("\n".join(l for l in text.splitlines() if not l.startswith(key + " ")) + "\n" + extra + "\n")
    assert message in _error(capsys, ["sweep", "--grid", str(grid), "--store", str(store)], store)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("g.toml", b"tasks = [\xff]", "is not UTF-8 text"),
        ("g.toml", b"", "is empty: it needs at least 'tasks'"),
        ("g.yaml", b"", "is empty: it needs at least 'tasks'"),
        ("g.yaml", b"# only a comment\n", "is empty"),
        ("g.toml", b"tasks = 5\npresets = ['lora']", "grid setting 'tasks' must be a list of names, got 5"),
        (
            "g.toml",
            b"tasks = ['rte']\npresets = ['lora']\nmodel = 123",
            "grid setting 'model' must be a string, got 123",
        ),
        ("g.yaml", b"- rte\n- lora\n", "must hold a table of settings"),
        ("g.toml", b"presets = ['lora']", "the grid has no tasks"),
        ("g.toml/", b"", "is a directory"),
        ("g.toml", b"tasks = " + b"[" * 2000, "nests its values too deeply"),
        ("g.yaml", b"tasks: " + b"[" * 20000, "nests its values too deeply"),
    ],
)
def test_bad_grid_files(capsys, tmp_path, store, name, content, message):
    if name.endswith("/"):
        (tmp_path / name).mkdir()
    else:
        (tmp_path / name).write_bytes(content)
    assert message in _error(capsys, ["sweep", "--grid", str(tmp_path / name), "--store", str(store)], store)


def test_sweep_without_tasks(capsys, store):
    assert "the grid has no tasks" in _error(capsys, ["sweep", "--presets", "lora", "--store", str(store)], store)


def _model_copy(tiny_model, tmp_path) -> Path:
    path = tmp_path / "model"
    shutil.copytree(tiny_model, path)
    return path


def test_models_that_cannot_do_the_run_are_refused_before_training(capsys, tiny_model, glue_dir, tmp_path, store):
    from transformers import GPTNeoXConfig

    model = _model_copy(tiny_model, tmp_path)
    assert "--max-length 1000 is above what model" in _error(
        capsys, train_argv(model, glue_dir, store, "--max-length", "1000"), store
    )
    # a few tokens: the tokenizer kept whole texts (it cannot cut below the special tokens), or no text at all
    for short in ("2", "3"):
        assert "--max-length must be at least 16" in _error(
            capsys, train_argv(model, glue_dir, store, "--max-length", short), store
        )
    GPTNeoXConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4).to_json_file(model / "config.json")
    err = _error(capsys, train_argv(model, glue_dir, store), store)
    assert "does not support model_type 'gpt_neox' yet; supported: bart, bert, " in err
    assert 'docs/contributing.md, "Adding an architecture"' in err
    # refused from config.json alone: before transformers parses it and before any weights load
    (model / "config.json").write_text('{"model_type": "not_in_transformers"}')
    (model / "model.safetensors").write_bytes(b"not weights: never read")
    assert "does not support model_type 'not_in_transformers' yet" in _error(
        capsys, train_argv(model, glue_dir, store), store
    )
    (model / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    assert "config.json is not a readable model config.json" in _error(
        capsys, train_argv(model, glue_dir, store), store
    )
    (model / "model.safetensors").unlink()
    assert "has no weights (model.safetensors or pytorch_model.bin)" in _error(
        capsys, train_argv(model, glue_dir, store), store
    )


def test_model_weights_that_cannot_be_read_are_refused_before_training(capsys, tiny_model, glue_dir, tmp_path, store):
    """A cut or overwritten model.safetensors was found by the run: a failed attempt in the store."""
    model = _model_copy(tiny_model, tmp_path)
    (model / "model.safetensors").write_bytes(b"garbage\n")
    assert "model.safetensors cannot be read" in _error(capsys, train_argv(model, glue_dir, store), store)


def test_a_model_without_a_tokenizer_is_refused_before_training(capsys, tiny_model, glue_dir, tmp_path, store):
    """transformers builds a tokenizer of special tokens only there: every word read as unknown,
    and the runs were stored as finished."""
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        (model / name).write_bytes((Path(tiny_model) / name).read_bytes())
    assert "has no tokenizer files" in _error(capsys, train_argv(model, glue_dir, store), store)


def test_inputs_are_checked_before_the_store_says_already_finished(capsys, tiny_model, glue_dir, tmp_path, store):
    assert cli.main(train_argv(tiny_model, glue_dir, store)) == 0
    err = _error(capsys, train_argv(tiny_model, tmp_path / "nonexistent", store), store)
    assert "GLUE directory" in err and "does not exist" in err


def test_bad_stores_are_refused_and_left_alone(capsys, tmp_path, store):
    store.write_bytes(b"")
    assert "is not a unipelt results store" in _error(
        capsys, ["report", "--store", str(store), "--out", str(tmp_path / "out")], store
    )
    assert store.read_bytes() == b"" and not (tmp_path / "out").exists()
    assert "is a directory" in _error(capsys, ["report", "--store", str(tmp_path), "--out", str(tmp_path / "o")], store)


def test_a_test_file_without_rows_is_refused_before_training(capsys, tiny_model, own_glue, store):
    path = own_glue / "RTE" / "dev.tsv"
    path.write_text(path.read_text(encoding="utf-8").splitlines(keepends=True)[0], encoding="utf-8")
    assert f"{path} has no rows" in _error(capsys, train_argv(tiny_model, own_glue, store), store)
    assert not store.exists()


def test_tsv_encoding_and_blank_lines(capsys, tiny_model, own_glue, store):
    path = own_glue / "RTE" / "train.tsv"
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "\n\n", encoding="utf-8")  # trailing blank lines: an editor's habit, accepted
    assert cli.main(train_argv(tiny_model, own_glue, store)) == 0
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:5] + ["\n"] + lines[5:]), encoding="utf-8")
    assert f"{path}:6: blank line between rows" in _error(
        capsys, train_argv(tiny_model, own_glue, store, "--force"), store
    )
    path.write_bytes(text.encode() + b"a sentence\t\xe9t\xe9\tentailment\n")
    assert f"{path} is not UTF-8 text" in _error(capsys, train_argv(tiny_model, own_glue, store, "--force"), store)


def test_a_config_file_nested_too_deeply(capsys, tiny_model, glue_dir, tmp_path, store):
    config = tmp_path / "deep.json"
    config.write_text("[" * 100_000)
    train = train_argv(tiny_model, glue_dir, store)
    argv = [*train[:4], "--config", str(config), "--lr", "1e-3", *train[6:]]
    assert "nests its values too deeply to be a PELT config" in _error(capsys, argv, store)


@pytest.mark.parametrize("name", ["$\\frac{$", "<svg onload=alert(1)>", "a_b*c*[x](y)|z"])
def test_names_are_drawn_and_written_as_plain_text(capsys, tiny_model, glue_dir, tmp_path, store, name):
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(unipelt.get_preset("lora").to_dict()))  # a preset's config: its lr applies
    train = train_argv(tiny_model, glue_dir, store)
    assert cli.main([*train[:4], "--config", str(config), *train[6:]]) == 0
    assert cli.main(["-q", "report", "--store", str(store), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<svg" not in md and "<svg" not in html
    row = next(line for line in md.splitlines() if "frac" in line or "svg" in line or "a\\_b" in line)
    assert row.startswith(
        "| "
        + {
            "$\\frac{$": "$\\\\frac{$",
            "<svg onload=alert(1)>": "&lt;svg onload=alert(1)&gt;",
            "a_b*c*[x](y)|z": "a\\_b\\*c\\*\\[x\\](y)\\|z",
        }[name]
        + " |"
    )


def test_a_failed_command_does_not_create_the_store(capsys, tiny_model, glue_dir, store):
    for flags in (["--k", "70"], ["--epochs", "0"], ["--lr", "nan"], ["--model-seed", "1", "--batch-size", "0"]):
        _error(capsys, train_argv(tiny_model, glue_dir, store, *flags), store)
    assert not store.exists()


def test_report_reads_an_existing_store_without_writing_it(capsys, tiny_model, glue_dir, tmp_path, store):
    assert cli.main(train_argv(tiny_model, glue_dir, store)) == 0
    before = store.read_bytes()
    assert cli.main(["-q", "report", "--store", str(store), "--out", str(tmp_path / "out")]) == 0
    assert store.read_bytes() == before
    with Store(store, readonly=True) as s:
        assert len(s.runs()) == 1
