"""GLUE reading and the SPEC §4 split: deterministic per seed, disjoint, exact to the rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from unipelt import UniPeltError
from unipelt.harness import locate
from unipelt.harness.data import CARVED_TEST_ROWS, load_splits, read_tsv, split_pool
from unipelt.harness.tasks import TASKS, get_task


def _pool(n: int) -> pd.DataFrame:
    return pd.DataFrame({"a": [f"row{i}" for i in range(n)], "b": None, "label": [i % 2 for i in range(n)]})


def test_split_follows_the_numpy_permutation_rule():
    pool = _pool(50)
    train, dev = split_pool(pool, 10, seed=111, dev_size=20, where="t")
    order = np.random.default_rng(111).permutation(50)
    assert list(train.a) == [f"row{i}" for i in order[:10]]
    assert list(dev.a) == [f"row{i}" for i in order[10:30]]


@pytest.mark.parametrize("k", [10, "all"])
def test_split_is_deterministic_and_disjoint(k):
    pool = _pool(60)
    first = split_pool(pool, k, seed=222, dev_size=20, where="t")
    again = split_pool(pool, k, seed=222, dev_size=20, where="t")
    other = split_pool(pool, k, seed=333, dev_size=20, where="t")
    assert all(a.equals(b) for a, b in zip(first, again))
    assert list(first[0].a) != list(other[0].a)
    train, dev = first
    assert not set(train.a) & set(dev.a)
    assert len(dev) == 20 and len(train) == (40 if k == "all" else 10)


def test_k_too_large_says_the_maximum():
    with pytest.raises(UniPeltError, match=r"K=45 is too large for t: it has 60 training rows.*at most K=40"):
        split_pool(_pool(60), 45, seed=1, dev_size=20, where="t")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_loads_from_the_glue_layout(glue_dir, name):
    splits = load_splits(get_task(name), 16, 111, dev_size=20, glue_dir=glue_dir)
    task = get_task(name)
    assert (len(splits.train), len(splits.dev)) == (16, 20)
    assert len(splits.test) == (CARVED_TEST_ROWS if task.carve_test else 30)
    if task.is_regression:
        assert splits.train.label.between(0, 5).all()
    else:
        assert set(splits.train.label) <= set(range(task.num_labels))
    assert splits.train.b.isna().all() == (task.text_b is None)


def test_headers_bom_and_string_labels(glue_dir):
    mrpc = read_tsv(glue_dir / "MRPC" / "train.tsv", get_task("mrpc"))  # header starts with a BOM
    assert mrpc.a[0].startswith("Amrozi accused his brother") and mrpc.label[0] == 1
    cola = read_tsv(glue_dir / "CoLA" / "train.tsv", get_task("cola"))  # no header
    assert len(cola) == 80 and cola.a[0].startswith("Our friends won't buy")
    mnli = read_tsv(glue_dir / "MNLI" / "dev.tsv", get_task("mnli"))  # 16 columns, label last
    assert mnli.label[0] == get_task("mnli").labels.index("neutral")


def test_qqp_test_split_is_carved_from_the_end_of_train(glue_dir):
    splits = load_splits(get_task("qqp"), "all", 111, dev_size=20, glue_dir=glue_dir)
    rows = read_tsv(glue_dir / "QQP" / "train.tsv", get_task("qqp"))
    assert splits.test.a.tolist() == rows.a.iloc[-CARVED_TEST_ROWS:].tolist()
    assert splits.test_source.startswith("carved")
    used = set(splits.train.a) | set(splits.dev.a)
    assert used == set(rows.a.iloc[:-CARVED_TEST_ROWS]) and not used & set(splits.test.a)


@pytest.mark.parametrize(
    "task, file, index, row, message",
    [
        (
            "rte",
            "RTE/train.tsv",
            6,
            "5\tonly two fields\n",
            "7: malformed row: expected 4 tab-separated fields, found 2",
        ),
        ("sst2", "SST-2/dev.tsv", 3, "a fine film\tmaybe\n", "4: label 'maybe' is not one of"),
        ("cola", "CoLA/train.tsv", 0, "gj04\t1\t\n", "1: malformed row: expected 4 tab-separated fields, found 3"),
        ("stsb", "STS-B/train.tsv", 2, "1\tg\tf\t2012\t1\tn\tn\ta man\ta dog\tnan\n", "3: score 'nan' is not a number"),
        ("stsb", "STS-B/dev.tsv", 2, "1\tg\tf\t2012\t1\tn\tn\ta man\ta dog\t-inf\n", "3: score '-inf' is not a number"),
    ],
)
def test_bad_row_names_file_and_line(own_glue, task, file, index, row, message):
    path = own_glue / file
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = row
    path.write_text("".join(lines))
    with pytest.raises(UniPeltError, match=rf"{path}:{message}"):
        read_tsv(path, get_task(task))


def test_missing_file_names_it(own_glue):
    (own_glue / "RTE" / "dev.tsv").unlink()
    with pytest.raises(UniPeltError, match=r"missing GLUE file .*RTE/dev\.tsv"):
        load_splits(get_task("rte"), 16, 111, dev_size=20, glue_dir=own_glue)


def test_no_glue_dir_names_each_place_once_and_how_to_get_the_task(tmp_path, monkeypatch):
    (tmp_path / "shared" / "data" / "glue").mkdir(parents=True)  # the old implicit default: no longer read
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(UniPeltError) as err:
        load_splits(get_task("rte"), 16, 111)
    message = str(err.value)
    for place in ("--glue-dir (not given)", "$GLUE_DIR (not set)", "embedded in unipelt (SST-2 only)", "the hub"):
        assert message.count(place) == 1, (place, message)
    assert "shared" not in message and "HF_HUB_OFFLINE=1" in message
    assert "RTE/train.tsv" in message and "unset HF_HUB_OFFLINE" in message


def test_embedded_sst2_without_a_glue_dir():
    """The demo's data come with the package: GLUE's own SST-2 files, gzip'd."""
    splits = load_splits(get_task("sst2"), 16, 111, dev_size=20)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (16, 20, 872)  # GLUE's dev has 872 rows
    assert splits.test_source == "GLUE dev (SST-2/dev.tsv)"  # as from a GLUE directory: the same run
    assert set(splits.test.label) == {0, 1} and splits.test.b.isna().all()
    assert locate.embedded_tasks() == ("SST-2",)


def test_a_given_glue_dir_wins_over_the_embedded_copy(glue_dir, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert len(load_splits(get_task("sst2"), 16, 111, dev_size=20).test) == 30  # the fixture's dev rows


def test_explicit_glue_dir_must_exist(tmp_path, monkeypatch):
    with pytest.raises(UniPeltError, match=r"--glue-dir \(or the grid's glue_dir\) is empty"):
        load_splits(get_task("sst2"), 16, 111, glue_dir="")  # was the embedded copy, or $GLUE_DIR
    with pytest.raises(UniPeltError, match=r"GLUE directory .*nope \(from --glue-dir\) does not exist"):
        load_splits(get_task("rte"), 16, 111, glue_dir=tmp_path / "nope")
    (tmp_path / "afile").write_text("")
    with pytest.raises(UniPeltError, match=r"GLUE directory .*afile \(from --glue-dir\) is a file"):
        load_splits(get_task("rte"), 16, 111, glue_dir=tmp_path / "afile")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "gone"))
    with pytest.raises(UniPeltError, match=r"from \$GLUE_DIR"):
        load_splits(get_task("rte"), 16, 111)


def test_hub_fallback_when_no_directory_and_online(tmp_path, monkeypatch):
    """The hub path is exercised with a stand-in for ``datasets.load_dataset`` (no network)."""
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    split = lambda n: datasets.Dataset.from_dict(  # noqa: E731
        {
            "sentence1": [f"p{i}" for i in range(n)],
            "sentence2": [f"h{i}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
        }
    )
    calls = []
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *a, **kw: calls.append(a) or {"train": split(50), "validation": split(7)}
    )
    splits = load_splits(get_task("rte"), 10, 111, dev_size=20)
    assert calls == [("nyu-mll/glue", "rte")]
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (10, 20, 7)
    assert "hub" in splits.test_source
