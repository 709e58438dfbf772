"""The command line end to end on a tiny random model, and every bad input's one-line error."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from unipelt import cli
from unipelt.harness.store import SCHEMA_VERSION, Store

from .conftest import cli_error, tiny_run_flags


@pytest.fixture
def base(glue_dir, tiny_model, tmp_path):
    """Flags every tiny run shares: small dev split, two epochs, a private store."""
    return tiny_run_flags(tiny_model, glue_dir, tmp_path / "s.sqlite", epochs=2)


def test_train_end_to_end(capsys, base, tmp_path):
    argv = [
        "-q",
        "train",
        "--task",
        "rte",
        "--preset",
        "unipelt-apl",
        "--k",
        "16",
        "--save",
        str(tmp_path / "ckpt"),
        *base,
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "rte unipelt-apl K=16 seed=111: test accuracy" in out and "trainable params" in out
    with Store(tmp_path / "s.sqlite") as store:
        runs = store.runs()
        assert len(runs) == 1 and runs.loc[0, "status"] == "finished"
        assert runs.loc[0, "sizes"] == {"train": 16, "dev": 20, "test": 30}
        assert set(runs.loc[0, "versions"]) >= {"unipelt", "torch", "transformers"}
        assert len(store.epochs()) == 2
        assert set(store.gates().submodule) == {"adapter", "prefix", "lora_q", "lora_v"}
    assert (tmp_path / "ckpt" / "unipelt.safetensors").is_file()
    assert cli.main(argv) == 0 and "already finished" in capsys.readouterr().out


def test_train_from_a_config_file(capsys, base, tmp_path):
    config = tmp_path / "small-lora.yaml"
    config.write_text("methods:\n  - method: lora\n    r: 4\n    targets: [q, v]\n")
    argv = ["-q", "train", "--task", "sst2", "--config", str(config), "--k", "16", *base]
    err = cli_error(capsys, argv)
    assert "config 'small-lora' matches no preset" in err and "pass --lr" in err
    assert cli.main([*argv, "--lr", "1e-3"]) == 0
    assert "sst2 small-lora K=16" in capsys.readouterr().out


def test_sweep_from_a_grid_file_then_report(capsys, base, glue_dir, tiny_model, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        f'tasks = ["stsb", "mrpc"]\npresets = ["bitfit", "lora"]\nk = [16]\ndata_seeds = [111, 222]\n'
        f'model = "{tiny_model}"\nglue_dir = "{glue_dir}"\ndev_size = 20\nepochs = 1\n'
    )
    assert cli.main(["-q", "sweep", "--grid", str(grid), "--store", str(tmp_path / "s.sqlite")]) == 0
    assert "8 runs in the grid: 0 were already finished, 8 finished now, 0 failed" in capsys.readouterr().out
    assert cli.main(["-q", "report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| MRPC (F1) | STS-B" not in md and "STSB (ρ)" in md and "| bitfit |" in md


def test_demo_prints_its_table(capsys, glue_dir, tiny_model, tmp_path):
    argv = [
        "-q",
        "demo",
        "--model",
        tiny_model,
        "--glue-dir",
        str(glue_dir),
        "--k",
        "16",
        "--dev-size",
        "20",
        "--epochs",
        "1",
        "--presets",
        "lora,bitfit",
        "--store",
        str(tmp_path / "d.sqlite"),
        "--out",
        str(tmp_path / "r"),
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(l.startswith("Table 1") for l in lines)  # plain text in the terminal: no Markdown, no <u>
    assert any(l.startswith("lora ") for l in lines) and any(l.startswith("bitfit ") for l in lines)
    assert "<u>" not in out and "| lora |" not in out
    assert (tmp_path / "r" / "report.html").is_file()
    assert len(list((tmp_path / "r" / "runs").glob("sst2--*.json"))) == 2  # each run in peft's layout too


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task", "wnli", "--preset", "lora"], "unknown task 'wnli'; known tasks: cola, sst2"),
        (["--task", "rte", "--preset", "lorax"], "unknown preset 'lorax'; known presets:"),
        (["--task", "rte", "--preset", "lora", "--k", "70"], "K=70 is too large for rte: it has 80 training rows"),
        (["--task", "rte", "--preset", "lora", "--k", "ten"], "K must be a positive integer or 'all'"),
    ],
)
def test_bad_train_arguments(capsys, base, flags, message):
    assert message in cli_error(capsys, ["train", *flags, *base])


def test_missing_model_directory(capsys, base, tmp_path):
    argv = ["train", "--task", "rte", "--preset", "lora", *base, "--model", str(tmp_path / "no-model")]
    assert "is not a local directory and the hub is offline" in cli_error(capsys, argv)


def test_missing_glue_directory_lists_where_it_looked(capsys, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = cli_error(capsys, ["train", "--task", "rte", "--preset", "lora", "--model", tiny_model])
    assert "no GLUE data found for rte; looked in: --glue-dir (not given); $GLUE_DIR (not set);" in err
    assert "--glue-dir DIR" in err
    err = cli_error(
        capsys, ["train", "--task", "rte", "--preset", "lora", "--model", tiny_model, "--glue-dir", "missing"]
    )
    assert "GLUE directory missing (from --glue-dir) does not exist" in err


def test_missing_and_malformed_files(capsys, own_glue, tiny_model, tmp_path):
    argv = [
        "train",
        "--preset",
        "lora",
        "--model",
        tiny_model,
        "--glue-dir",
        str(own_glue),
        "--dev-size",
        "20",
        "--k",
        "16",
        "--store",
        str(tmp_path / "s.sqlite"),
    ]
    (own_glue / "RTE" / "train.tsv").unlink()
    assert f"missing GLUE file {own_glue / 'RTE' / 'train.tsv'}" in cli_error(capsys, [*argv, "--task", "rte"])
    path = own_glue / "SST-2" / "train.tsv"
    lines = path.read_text().splitlines(keepends=True)
    lines[9] = "a sentence\twith\ttoo many fields\n"
    path.write_text("".join(lines))
    err = cli_error(capsys, [*argv, "--task", "sst2"])
    assert f"{path}:10: malformed row: expected 2 tab-separated fields, found 3" in err


def test_newer_store_is_refused_and_kept(capsys, base, tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.close()
    before = path.read_bytes()
    for argv in (["train", "--task", "rte", "--preset", "lora", "--k", "16", *base], ["report", "--store", str(path)]):
        assert "newer than this unipelt reads" in cli_error(capsys, argv)
    assert path.read_bytes() == before


def test_bad_sweep_grids(capsys, base, tmp_path):
    assert "unknown task 'rtee'" in cli_error(capsys, ["sweep", "--tasks", "rte,rtee", "--presets", "lora", *base])
    assert "unknown preset 'lorra'" in cli_error(capsys, ["sweep", "--tasks", "rte", "--presets", "lora,lorra", *base])
    grid = tmp_path / "g.toml"
    grid.write_text("tasks = ['rte']\npresets = ['lora']\nlearning_rate = 1\n")
    assert "unknown grid setting(s) ['learning_rate']" in cli_error(capsys, ["sweep", "--grid", str(grid), *base])
    grid.write_text("tasks = [rte\n")
    assert f"grid file {grid} is not valid TOML" in cli_error(capsys, ["sweep", "--grid", str(grid), *base])
    assert "does not exist" in cli_error(capsys, ["report", "--store", str(tmp_path / "none.sqlite")])


def test_argparse_errors_return_instead_of_exiting(capsys):
    assert cli.main(["train", "--task", "rte"]) == 2  # neither --preset nor --config
    assert "one of the arguments --preset --config is required" in capsys.readouterr().err


def test_non_positive_settings_are_refused(capsys, base):
    assert "epochs must be a positive integer, got 0" in cli_error(
        capsys, ["train", "--task", "rte", "--preset", "lora", *base, "--epochs", "0"]
    )
    assert "learning rate must be a positive number" in cli_error(
        capsys, ["train", "--task", "rte", "--preset", "lora", *base, "--lr", "-1"]
    )


def test_train_bf16_autocasts_the_training_steps(capsys, base, tmp_path, monkeypatch):
    from unipelt.harness import runner

    dtypes = set()
    load = runner.load_model

    def watched(spec, task):
        tokenizer, model = load(spec, task)

        def hook(module, inputs, out):
            if model.training:
                dtypes.add(out.dtype)

        model.classifier.register_forward_hook(hook)
        return tokenizer, model

    monkeypatch.setattr(runner, "load_model", watched)
    argv = ["-q", "train", "--task", "rte", "--preset", "lora", "--k", "16", "--bf16", *base]
    assert cli.main(argv) == 0 and "test accuracy" in capsys.readouterr().out
    assert dtypes == {torch.bfloat16}
    with Store(tmp_path / "s.sqlite", readonly=True) as store:
        runs = store.runs()
    assert runs.loc[0, "status"] == "finished" and runs.loc[0, "spec"]["bf16"] is True
    assert cli.main(argv[: -len(base)] + base) == 0 and "already finished" in capsys.readouterr().out
    assert cli.main([a for a in argv if a != "--bf16"]) == 0  # without --bf16: another run
    with Store(tmp_path / "s.sqlite", readonly=True) as store:
        assert sorted(s["bf16"] for s in store.runs().spec) == [False, True]


def test_demo_help_shows_the_defaults_it_runs(capsys):
    assert cli.main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    text = " ".join(out.split())  # argparse wraps help lines, at spaces or after hyphens
    assert f"maximum epochs (default {cli.DEMO['epochs']})" in text  # the demo's 10, not a sweep's 50
    assert f"(default {cli.DEMO['tasks']})" in text and f"(default {cli.DEMO['k']})" in text
    assert cli.DEMO["presets"] in "".join(out.split())
