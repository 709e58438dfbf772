"""The command line end to end on a tiny random model, and every bad input's one-line error."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

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
    assert len(list((tmp_path / "out" / "runs").glob("*.json"))) == 8
    # a run that differs only in its learning rate gets a file of its own, not the other's
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
        row = dict(zip(columns, db.execute("SELECT * FROM runs LIMIT 1").fetchone()))
        row.update(run_key="0" * 20, lr=row["lr"] * 2)
        db.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(row))})", list(row.values()))
    db.close()
    assert cli.main(["-q", "report", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out2")]) == 0
    assert len(list((tmp_path / "out2" / "runs").glob("*.json"))) == 9
    # rows no unipelt wrote: one error line each, the store as it was
    cases = [("spec", "{bad"), ("k", "abc"), ("task", "zzz"), ("params", "[1, 2]"), ("spec", "[]"), ("spec", "null")]
    cases += [("spec", '{"config": 5}'), ("versions", "[]"), ("best_epoch", "x")]  # were tracebacks
    for column, value in cases:
        damaged = tmp_path / f"damaged-{column}.sqlite"
        shutil.copy(tmp_path / "s.sqlite", damaged)
        with sqlite3.connect(damaged) as db:
            db.execute(f"UPDATE runs SET {column} = ? WHERE run_key = ?", (value, "0" * 20))
        db.close()
        before = damaged.read_bytes()
        out = tmp_path / f"{column}-{len(value)}"
        err = cli_error(capsys, ["-q", "report", "--store", str(damaged), "--out", str(out)])
        assert "holds a row that cannot be read" in err and damaged.read_bytes() == before
        assert not (out / "runs").exists()  # nothing written


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
        (["--task", "rte", "--preset", "lora", "--k", "²"], "K must be a positive integer or 'all'"),  # isdigit()
        (["--task", "rte", "--preset", "lora", "--k", "9" * 5000], "K must be a positive integer or 'all'"),
        (["--task", "rte", "--preset", "lora", "--lr", "inf"], "learning rate must be a positive number"),
        (["--task", "rte", "--preset", "lora", "--head-lr", "0"], "head's learning rate must be a positive number"),
    ],
)
def test_bad_train_arguments(capsys, base, flags, message):
    assert message in cli_error(capsys, ["train", *flags, *base])


def test_a_refusal_after_the_data_are_read_is_still_the_only_line(capsys, caplog, base, tmp_path):
    """The checks before any run read each task's splits, and logged their sizes (INFO) before a
    model check refused; a store that is no unipelt store was found only after those checks."""
    config = tmp_path / "c.yaml"
    config.write_text("methods:\n  - method: lora\nmodules_to_save: [nonexistent]\n")
    argv = ["train", "--task", "rte", "--config", str(config), "--lr", "1e-3", "--k", "16", *base]
    with caplog.at_level("INFO"):  # pytest holds the log records: the CLI prints them to stderr
        assert "modules_to_save names 'nonexistent'" in cli_error(capsys, argv)
    assert [r.getMessage() for r in caplog.records if r.levelname != "DEBUG"] == []
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    before = other.read_bytes()
    argv = ["train", "--task", "rte", "--preset", "lora", "--k", "16", *base[:-1], str(other)]
    caplog.clear()
    with caplog.at_level("INFO"):
        assert "is not a unipelt results store" in cli_error(capsys, argv)
    assert [r.getMessage() for r in caplog.records if r.levelname != "DEBUG"] == []
    assert other.read_bytes() == before


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


def test_bad_sweep_values(capsys, base):
    sweep = ["sweep", "--tasks", "rte", "--presets", "lora", *base]
    assert "'data_seeds' must be a list of integers, got '²'" in cli_error(capsys, [*sweep, "--data-seeds", "²"])
    assert "'data_seeds' must be a list of integers" in cli_error(capsys, [*sweep, "--data-seeds", "1" * 5000])
    assert "grid setting 'k' lists no values" in cli_error(capsys, [*sweep, "--k", ","])
    assert "grid setting 'data_seeds' lists no values" in cli_error(capsys, [*sweep, "--data-seeds", ""])


def test_a_damaged_or_foreign_store_is_refused_and_kept(capsys, base, tmp_path):
    """A damaged page used to end a sweep in a traceback after the store was switched to WAL."""
    path = tmp_path / "s.sqlite"
    store = Store(path)
    with store.transaction() as db:  # enough rows for pages beyond the schema's
        db.executemany("INSERT INTO leases VALUES (?, ?, ?, ?, ?)", [(f"k{i}", "o", "h", 1, 0.0) for i in range(2000)])
    store.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 3000] = b"\xff" * 3000
    path.write_bytes(bytes(data))
    train = ["train", "--task", "rte", "--preset", "lora", "--k", "16", *base]
    assert "is damaged" in cli_error(capsys, train)
    assert path.read_bytes() == bytes(data)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER)")
    db.close()
    assert "not a unipelt results store (schema version None)" in cli_error(capsys, ["report", "--store", str(other)])
    with sqlite3.connect(other) as db:
        db.execute("INSERT INTO schema_version VALUES (2)")
    db.close()
    assert "not a unipelt results store (no runs table)" in cli_error(capsys, ["report", "--store", str(other)])


def test_argparse_errors_return_instead_of_exiting(capsys):
    """argparse's refusals are one line too, as every other: the usage is one --help away."""
    for argv, message in (
        (["train", "--task", "rte"], "one of the arguments --preset --config is required"),  # neither
        (["merge", "a", "b", "--weights", "1,1", "--out", "o", "--density", "abc"], "invalid float value: 'abc'"),
        (["demo", "--epochs", "nan"], "invalid int value: 'nan'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("unipelt: error: ") and message in err and err.count("\n") == 1, err
        assert "--help)" in err


def test_a_checkpoint_or_report_is_never_written_into_the_model_or_the_data(capsys, base, tiny_model, glue_dir):
    """A checkpoint saved inside the model directory would change the model's identity (a hash of
    its files), and every later run's key with it; one inside the GLUE directory mixes outputs with data."""
    before = sorted(p for p in Path(tiny_model).rglob("*"))
    train = ["train", "--task", "rte", "--preset", "lora", "--k", "16", *base]
    assert "inside the --model directory" in cli_error(capsys, [*train, "--save", str(tiny_model)])
    assert "inside the --model directory" in cli_error(capsys, [*train, "--save", str(Path(tiny_model) / "ck")])
    assert "inside the --glue-dir directory" in cli_error(capsys, [*train, "--save", str(Path(glue_dir) / "ck")])
    demo = ["demo", "--glue-dir", str(glue_dir), "--store", base[-1], "--out", str(Path(glue_dir) / "report")]
    assert "inside the --glue-dir directory" in cli_error(capsys, demo)
    assert sorted(p for p in Path(tiny_model).rglob("*")) == before and not (Path(glue_dir) / "report").exists()


def test_a_checkpoint_or_report_is_never_written_where_the_store_will_be(capsys, base, tmp_path):
    """Both checked before training: the store was created, then the checkpoint failed after it."""
    store = base[-1]
    train = ["train", "--task", "rte", "--preset", "lora", "--k", "16", *base]
    assert "is the results store's path" in cli_error(capsys, [*train, "--save", store])
    assert "--save directory is empty" in cli_error(capsys, [*train, "--save", ""])
    assert "--out directory is empty" in cli_error(capsys, ["report", "--store", store, "--out", " "])
    assert "--out is empty" in cli_error(capsys, ["merge", str(tmp_path), "--weights", "1", "--out", ""])
    assert not Path(store).exists()


def test_non_positive_settings_are_refused(capsys, base):
    assert "epochs must be a positive integer, got 0" in cli_error(
        capsys, ["train", "--task", "rte", "--preset", "lora", *base, "--epochs", "0"]
    )
    assert "learning rate must be a positive number" in cli_error(
        capsys, ["train", "--task", "rte", "--preset", "lora", *base, "--lr", "-1"]
    )
    assert "batch-size must be below 2**31" in cli_error(  # was islice's ValueError, a failed run
        capsys, ["train", "--task", "rte", "--preset", "lora", *base, "--batch-size", "9" * 20]
    )


def test_train_bf16_autocasts_the_training_steps(capsys, base, tmp_path, monkeypatch):
    """The layers run in bf16; the task head in float32, in training and scoring alike: a bf16
    regression output came in steps of 1/64 (STS-B's Spearman ranked ties)."""
    from unipelt.harness import runner

    dtypes, head = set(), set()
    load = runner.load_model

    def watched(spec, task):
        tokenizer, model = load(spec, task)

        def hook(module, inputs, out):
            if model.training:
                dtypes.add(out.dtype)

        model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(hook)
        model.classifier.register_forward_hook(lambda module, inputs, out: head.add(out.dtype))
        return tokenizer, model

    monkeypatch.setattr(runner, "load_model", watched)
    argv = ["-q", "train", "--task", "rte", "--preset", "lora", "--k", "16", "--bf16", *base]
    assert cli.main(argv) == 0 and "test accuracy" in capsys.readouterr().out
    assert dtypes == {torch.bfloat16} and head == {torch.float32}
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
