"""Property: whatever grid file, config file or TSV rows a user writes, the CLI either succeeds or
prints one `unipelt: error: ...` line and exits 2, and then the store is as it was.

Training is replaced by a recorded stub: the property is about everything before and around a
run, and the stub keeps each example to milliseconds."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import unipelt
from unipelt import cli
from unipelt.harness import runner
from unipelt.harness.store import Store

from .conftest import finished_record, train_argv

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-5, 300)
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["rte", "sst2", "lora", "adapter", "all", "16", "1e-3", "inf", ""])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
GRID_KEYS = st.sampled_from(
    [
        "tasks",
        "presets",
        "configs",
        "k",
        "ks",
        "data_seeds",
        "model_seed",
        "lr",
        "epochs",
        "patience",
        "dev_size",
        "objective",
        "glue_dir",
        "model",
        "data-seeds",
        "bogus",
    ]
)
METHOD_KEYS = st.sampled_from(
    [
        "method",
        "r",
        "alpha",
        "targets",
        "dropout",
        "composition",
        "insertion",
        "target",
        "length",
        "mid_dim",
        "attention",
        "activation",
        "scale",
        "bogus",
    ]
)


def _run(argv: list[str], store: Path) -> None:
    """The property itself: success, or exit 2 with one error line and the store unchanged."""
    before = store.read_bytes() if store.exists() else None
    err = io.StringIO()
    with (
        mock.patch.object(runner, "run", finished_record),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        status = cli.main(argv)
    assert status in (0, 2), (status, err.getvalue())
    event(f"exit {status}")  # --hypothesis-show-statistics: how often each outcome was reached
    if status == 2:
        text = err.getvalue()
        assert text.startswith("unipelt: error: ") and text.count("\n") == 1, text
        assert (store.read_bytes() if store.exists() else None) == before


def _store_with_a_run(folder: Path, tiny_model: str, glue_dir) -> Path:
    """A store that already holds a finished run, so 'unchanged' has something to compare."""
    from unipelt.harness import make_spec

    store = folder / "s.sqlite"
    spec = make_spec(task="rte", preset="bitfit", model=tiny_model, k=17, dev_size=20, glue_dir=str(glue_dir))
    with Store(store) as s:
        s.write(finished_record(spec))
    return store


def _base_grid(tiny_model, glue_dir) -> dict:
    return {
        "tasks": ["rte"],
        "presets": ["lora"],
        "k": [16],
        "dev_size": 20,
        "epochs": 1,
        "model": str(tiny_model),
        "glue_dir": str(glue_dir),
    }


@SETTINGS
@given(
    changes=st.dictionaries(GRID_KEYS, VALUES, max_size=3),
    dropped=st.sets(GRID_KEYS, max_size=2),
    suffix=st.sampled_from([".yaml", ".toml"]),
    raw=st.none() | st.binary(max_size=40),
)
@example(changes={"presets": [""]}, dropped=set(), suffix=".yaml", raw=None)  # once a KeyError
@example(changes={"configs": [None]}, dropped=set(), suffix=".yaml", raw=None)  # once a TypeError
@example(changes={"tasks": [None]}, dropped=set(), suffix=".toml", raw=None)
def test_random_grid_files(tiny_model, glue_dir, changes, dropped, suffix, raw):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        grid = {k: v for k, v in {**_base_grid(tiny_model, glue_dir), **changes}.items() if k not in dropped}
        # YAML for both suffixes: a .toml file of YAML text is one more malformed input
        (folder / f"grid{suffix}").write_bytes(raw if raw is not None else yaml.safe_dump(grid).encode())
        store = _store_with_a_run(folder, tiny_model, glue_dir)
        _run(["-q", "sweep", "--grid", str(folder / f"grid{suffix}"), "--store", str(store)], store)


# valid method entries, each then changed in up to two fields
ENTRIES = st.tuples(
    st.sampled_from(
        [
            {"method": "lora", "r": 4},
            {"method": "adapter"},
            {"method": "prefix", "length": 5},
            {"method": "lora", "targets": ["ffn_in"]},
            {"method": "prompt"},
        ]
    ),
    st.dictionaries(METHOD_KEYS, VALUES, max_size=2) | st.just({}),
).map(lambda t: {**t[0], **t[1]})


@SETTINGS
@given(
    entries=st.lists(ENTRIES, min_size=1, max_size=3),
    extra=st.dictionaries(st.sampled_from(["gate_pooling", "methods", "bogus"]), VALUES, max_size=1) | st.just({}),
    raw=st.none() | st.binary(max_size=40),
)
def test_random_config_files(tiny_model, glue_dir, entries, extra, raw):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = {"methods": entries, **extra}
        (folder / "mine.yaml").write_bytes(raw if raw is not None else yaml.safe_dump(config).encode())
        store = _store_with_a_run(folder, tiny_model, glue_dir)
        _run(
            train_argv(tiny_model, glue_dir, store, method=("--config", str(folder / "mine.yaml"), "--lr", "1e-3")),
            store,
        )


ROW_TEXT = st.lists(
    st.sampled_from(["a", " ", "\t", "\n", "\r", '"', "\x00", "é", "1", "entailment", "not_entailment"]), max_size=12
).map("".join)


@SETTINGS
@given(rows=st.lists(st.tuples(st.integers(0, 90), ROW_TEXT.map(str.encode) | st.binary(max_size=12)), max_size=3))
def test_random_tsv_rows(tiny_model, glue_dir, rows):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(glue_dir / "RTE", folder / "glue" / "RTE")
        path = folder / "glue" / "RTE" / "train.tsv"
        lines = path.read_bytes().splitlines(keepends=True)
        for at, row in rows:
            lines.insert(min(at, len(lines)), row)
        path.write_bytes(b"".join(lines))
        store = _store_with_a_run(folder, tiny_model, glue_dir)
        _run(
            train_argv(tiny_model, folder / "glue", store, "--force"),
            store,
        )


def test_thefinished_record_paths_succeed(tiny_model, glue_dir, tmp_path):
    """The properties above reach success too: the base inputs are valid."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(_base_grid(tiny_model, glue_dir)))
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(unipelt.get_preset("lora").to_dict()))
    with mock.patch.object(runner, "run", finished_record), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["-q", "sweep", "--grid", str(grid), "--store", str(tmp_path / "s.sqlite")]) == 0
        assert (
            cli.main(
                train_argv(
                    tiny_model, glue_dir, tmp_path / "s.sqlite", method=("--config", str(tmp_path / "mine.yaml"))
                )
            )
            == 0
        )
