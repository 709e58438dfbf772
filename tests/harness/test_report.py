"""The report: Table 1/2/4 rows, bold best and underlined second, self-contained HTML."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from unipelt import get_preset
from unipelt.harness import report
from unipelt.harness.record import RunRecord
from unipelt.harness.spec import RunSpec
from unipelt.harness.store import Store

# test scores per (method, task) for data seeds 111 and 222
SCORES = {
    "full": {"rte": (0.60, 0.62), "sst2": (0.90, 0.90)},
    "adapter": {"rte": (0.64, 0.66), "sst2": (0.85, 0.85)},
    "prefix": {"rte": (0.55, 0.55), "sst2": (0.80, 0.82)},
    "lora": {"rte": (0.69, 0.69), "sst2": (0.84, 0.84)},
    "unipelt-ap": {"rte": (0.66, 0.66), "sst2": (0.80, 0.80)},
    "unipelt-apl": {"rte": (0.70, 0.72), "sst2": (0.83, 0.85)},
}
SPEED = {"full": (1.0, 100.0), "lora": (0.5, 80.0)}  # s/step, inference ex/s; others: (0.6, 90)


def _record(method, task, seed, value) -> RunRecord:
    spec = RunSpec(
        task=task, method=method, config=get_preset("lora"), model="/models/tiny", k=100, data_seed=seed, lr=1e-4
    )
    step, ex = SPEED.get(method, (0.6, 90.0))
    gates = (
        {0: {"adapter": 0.2, "prefix": 0.7}, 1: {"adapter": 0.4, "prefix": 0.9}} if method.startswith("unipelt") else {}
    )
    return RunRecord(
        spec=spec,
        status="finished",
        metric="accuracy",
        test_metric=value,
        best_epoch=1,
        params={"total": 1000 if method == "full" else 10, "inference": 10},
        test_source="GLUE dev",
        train_s_per_step=step,
        infer_ex_per_s=ex,
        gates=gates,
        versions={"unipelt": "0.1.0"},
    )


@pytest.fixture
def built(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        for method, tasks in SCORES.items():
            for task, values in tasks.items():
                for seed, value in zip((111, 222), values):
                    store.write(_record(method, task, seed, value))
        failed = RunSpec(task="rte", method="prompt", config=get_preset("lora"), model="/models/tiny", k=100, lr=1e-4)
        store.write(
            RunRecord(spec=failed, status="failed", reason="training loss is nan at epoch 3", metric="accuracy")
        )
        yield report.build(store)


def _row(markdown: str, title: str, method: str) -> list[str]:
    section = markdown.split(f"### {title}")[1].split("###")[0]
    line = next(l for l in section.splitlines() if l.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table1_cells_marks_and_average(built):
    md = report.markdown(built)
    title = "Table 1 — tiny, K=100"
    assert _row(md, title, "unipelt-apl") == ["unipelt-apl", "84.0 ± 1.4", "**71.0 ± 1.4**", "**77.5**"]
    assert _row(md, title, "full") == ["full", "**90.0 ± 0.0**", "61.0 ± 1.4", "75.5"]
    assert _row(md, title, "lora") == ["lora", "84.0 ± 0.0", "<u>69.0 ± 0.0</u>", "<u>76.5</u>"]
    header = md.split(f"### {title}")[1].splitlines()[2]
    assert header == "| method | SST2 (acc) | RTE (acc) | Avg |"  # the paper's task order


def test_second_best_is_underlined(built):
    md = report.markdown(built)
    sst2 = {m: _row(md, "Table 1 — tiny, K=100", m)[1] for m in SCORES}
    assert sst2["full"].startswith("**") and sst2["adapter"] == "<u>85.0 ± 0.0</u>"
    assert sum(v.startswith("<u>") for v in sst2.values()) == 1
    # avg: unipelt-apl 77.5 best, lora 76.5 second
    assert _row(md, "Table 1 — tiny, K=100", "lora")[3] == "<u>76.5</u>"


def test_table2_against_the_best_submodule(built):
    md = report.markdown(built)
    title = "Table 2 — tiny, K=100: UniPELT vs its submodules"
    assert _row(md, title, "unipelt-ap") == ["unipelt-ap", "80.0 ± 0.0", "**66.0 ± 0.0**"]
    # prefix is at RTE's floor (55.0 ≤ 57.6): shown, and no reason not to compare with adapter, the bound
    bound = ["max(adapter, prefix)", "**85.0 (adapter)**", "65.0 (adapter); prefix ⌊2/2⌋"]
    assert _row(md, title, "max(adapter, prefix)") == bound
    assert _row(md, title, "max(adapter, prefix, lora)")[2] == "69.0 (lora); prefix ⌊2/2⌋"


def test_table2_does_not_compare_with_a_bound_whose_runs_are_at_the_floor(tmp_path):
    """SST-2's upper bound was one LoRA seed that learned nothing beside two that did: the variant
    was bold over it, and the study's summary read it as a gain (SPEC §4: comparisons read only
    runs above the floor)."""
    scores = {
        "full": (0.90, 0.90, 0.90),
        "adapter": (0.60, 0.61, 0.62),
        "prefix": (0.62, 0.63, 0.64),
        "lora": (0.75, 0.76, 0.51),  # one seed at the floor (≤ 53.7)
        "unipelt-apl": (0.69, 0.70, 0.69),
    }
    with Store(tmp_path / "s.sqlite") as store:
        for method, values in scores.items():
            for seed, value in zip((111, 222, 333), values):
                store.write(_record(method, "sst2", seed, value))
        md = report.markdown(report.build(store))
    title = "Table 2 — tiny, K=100: UniPELT vs its submodules"
    assert _row(md, title, "unipelt-apl") == ["unipelt-apl", "69.3 ± 0.6"]  # 69.3 > 67.3, not bold
    assert _row(md, title, "max(adapter, prefix, lora)") == ["max(adapter, prefix, lora)", "67.3 (lora) ⌊1/3⌋"]
    assert _row(md, "Table 1 — tiny, K=100", "lora")[1] == "67.3 ± 14.2 ⌊1/3⌋"  # unranked


def test_table4_relative_to_full_fine_tuning(built):
    md = report.markdown(built)
    lora = _row(md, "Table 4 — tiny: parameters and time", "lora")
    assert lora[1:4] == ["10", "10", "1.00%"]
    assert lora[5] == "50%" and lora[7] == "125%"  # 0.5 s vs 1.0 s; 100/80 ex/s


def test_failed_runs_are_listed(built):
    assert "| rte | prompt | 100 | 111 | training loss is nan at epoch 3 |" in report.markdown(built)


def test_files_and_self_contained_html(built, tmp_path):
    out = report.write(built, tmp_path / "out")
    html = (out / "report.html").read_text()
    assert {p.name for p in out.iterdir()} == {"report.md", "report.html", "metric_vs_k_0.png", "gates_0.png"}
    images = re.findall(r"<img [^>]*src='([^']*)'", html)
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "<b>71.0 ± 1.4</b>" in html and "<u>85.0 ± 0.0</u>" in html
    assert "](metric_vs_k_0.png)" in (out / "report.md").read_text()


def test_table4_reference_spans_full_fine_tuning_variants(tmp_path):
    # two epoch budgets split "full" into two rows; both are still the reference
    with Store(tmp_path / "s.sqlite") as store:
        for method, epochs, step in (("full", 5, 1.0), ("full", 15, 3.0), ("lora", 5, 1.0)):
            record = _record(method, "rte", 111, 0.6)
            store.write(replace(record, spec=replace(record.spec, epochs=epochs), train_s_per_step=step))
        md = report.markdown(report.build(store))
    lora = _row(md, "Table 4 — tiny: parameters and time", "lora")
    assert lora[3] == "1.00%" and lora[5] == "50%"  # 1.0 s against the mean of 1.0 s and 3.0 s


def test_a_model_replaced_at_the_same_path_gets_its_own_rows(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        for model_id, value in (("aaaa", 0.6), ("bbbb", 0.8)):
            record = _record("lora", "rte", 111, value)
            store.write(replace(record, spec=replace(record.spec, model_id=model_id)))
        md = report.markdown(report.build(store))
    assert _row(md, "Table 1 — tiny, K=100", "lora model\\_id=aaaa")[1] == "<u>60.0</u>"
    assert _row(md, "Table 1 — tiny, K=100", "lora model\\_id=bbbb")[1] == "**80.0**"


def test_runs_on_two_versions_of_a_tasks_data_are_never_averaged(tmp_path):
    """data_id differs per task by design (a user's own STS-B beside the project's SST-2): only
    two values for one task split a method's row."""
    with Store(tmp_path / "s.sqlite") as store:
        for data_id, score in (("", 0.5), ("8b62fdcdfc1287a4", 0.7)):
            for seed in (111, 222):
                record = _record("lora", "rte", seed, score)
                store.write(replace(record, spec=replace(record.spec, data_id=data_id)))
        for task, data_id in (("sst2", ""), ("stsb", "c0ffee0000000000")):  # one version each
            record = _record("lora", task, 111, 0.6)
            store.write(replace(record, spec=replace(record.spec, data_id=data_id)))
        md = report.markdown(report.build(store))
    title = "Table 1 — tiny, K=100"
    assert md.split(f"### {title}")[1].splitlines()[2] == "| method | SST2 (acc) | RTE (acc) | STSB (ρ) | Avg |"
    assert (
        _row(md, title, "lora data=project")[2] == "50.0 ± 0.0 ⌊2/2⌋"
    )  # two seeds each, not four; at the floor: unranked
    assert _row(md, title, "lora data=8b62fdcd")[2] == "**70.0 ± 0.0**"
    assert "lora data=c0ffee00" not in md  # STS-B's one version splits nothing


def test_two_configs_under_one_method_name_are_never_averaged(tmp_path):
    """A config file edited between two sweeps (LoRA r=8, then r=64) keeps its method name: both
    were averaged in one row, as if they were seeds of one method."""
    from unipelt import LoRAConfig, PeltConfig

    with Store(tmp_path / "s.sqlite") as store:
        for r, score in ((8, 0.9), (64, 0.5)):
            record = _record("mine", "rte", 111, score)
            config = PeltConfig(methods=(LoRAConfig(r=r),))
            store.write(replace(record, spec=replace(record.spec, config=config)))
        md = report.markdown(report.build(store))
    table = md.split("### Table 1 — tiny, K=100")[1].split("###")[0]
    rows = [line for line in table.splitlines() if line.startswith("| mine")]
    assert len(rows) == 2 and all(" config=" in row for row in rows)
    assert sorted(row.split("|")[2].strip() for row in rows) == ["**90.0**", "50.0 ⌊1/1⌋"]


@pytest.mark.parametrize(
    "field, values",
    [("head_lr", (None, 1e-3)), ("head", ("pooler", "mean"))],  # an unset head_lr is a setting of its own
)
def test_runs_that_differ_in_a_head_setting_are_never_averaged(tmp_path, field, values):
    with Store(tmp_path / "s.sqlite") as store:
        for value, score in zip(values, (0.5, 0.7)):
            for seed in (111, 222):
                record = _record("lora", "rte", seed, score)
                changes = {field: value}
                if field == "head":  # as the harness records it: in the config too, so in the key
                    changes["config"] = replace(record.spec.config, head=value)
                store.write(replace(record, spec=replace(record.spec, **changes)))
        md = report.markdown(report.build(store))
    title = "Table 1 — tiny, K=100"
    shown = [f"lora {field.replace('_', chr(92) + '_')}={v if v is not None else 'none'}" for v in values]
    assert _row(md, title, shown[0])[1] == "50.0 ± 0.0 ⌊2/2⌋"  # two seeds each, not four; at the floor: unranked
    assert _row(md, title, shown[1])[1] == "**70.0 ± 0.0**"


def test_epochs_that_differ_per_k_split_no_row_and_one_line_joins_them(tmp_path):
    from unipelt.harness import plots, tables

    with Store(tmp_path / "s.sqlite") as store:
        for method in ("adapter", "prefix", "lora", "unipelt-apl"):
            for k, epochs in ((100, 15), (500, 5)):
                record = _record(method, "rte", 111, 0.6 + k / 10_000)
                store.write(replace(record, spec=replace(record.spec, k=k, epochs=epochs)))
        built = report.build(store)
        runs = tables.with_variants(store.runs())
    md = report.markdown(built)
    assert _row(md, "Table 1 — tiny, K=500", "lora")[1] == "**65.0**"  # no "lora epochs=5" row
    assert "_Every run here has epochs=5; other K differ._" in md
    assert "Table 2 — tiny, K=100: UniPELT vs its submodules" in md
    caption = next(f.caption for f in built.figures if f.name.startswith("metric_vs_k"))
    assert "The runs differ per K in epochs (K=100: 15, K=500: 5)" in caption
    assert _row(md, "Table 4 — tiny: parameters and time", "lora epochs=15")[1] == "10"  # per model: split
    figure = plots.metric_vs_k(runs, "tiny")
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["adapter", "prefix", "lora", "unipelt-apl"]
    bbox = legend.get_window_extent(figure.canvas.get_renderer())
    panels = [ax.get_window_extent() for ax in figure.axes if ax.has_data()]
    assert all(bbox.x0 >= p.x1 for p in panels)  # right of every panel: it covers no title
    lines = {c.get_label(): len(c.lines[0].get_xdata()) for c in figure.axes[0].containers}
    assert lines == {"adapter": 2, "prefix": 2, "lora": 2, "unipelt-apl": 2}  # one line per method across K


def test_floor_marks_head_only_row_and_unlearnable_cells_left_out(tmp_path):
    scores = {  # SST-2 floor 53.7, RTE 57.6
        "full": {"sst2": (0.90, 0.90), "rte": (0.52, 0.53)},  # RTE: full fine-tuning at the floor
        "head-only": {"sst2": (0.80, 0.80), "rte": (0.55, 0.55)},  # and head-only too: not learnable
        "adapter": {"sst2": (0.50, 0.51), "rte": (0.60, 0.61)},
        "prefix": {"sst2": (0.85, 0.86), "rte": (0.62, 0.62)},
        "unipelt-ap": {"sst2": (0.88, 0.88), "rte": (0.63, 0.63)},
    }
    with Store(tmp_path / "s.sqlite") as store:
        for method, tasks in scores.items():
            for task, values in tasks.items():
                for seed, value in zip((111, 222), values):
                    store.write(_record(method, task, seed, value))
        built = report.build(store)
    md, html = report.markdown(built), report.html_page(built)
    table1 = "Table 1 — tiny, K=100"
    assert _row(md, table1, "adapter")[1] == "50.5 ± 0.7 ⌊2/2⌋ ‡"  # at the floor, and not above head-only
    assert _row(md, table1, "head-only")[1:3] == ["80.0 ± 0.0", "55.0 ± 0.0 ⌊2/2⌋"]
    assert _row(md, table1, "prefix")[1] == "85.5 ± 0.7"
    assert "SST2 ≤ 53.7, RTE ≤ 57.6" in md and "‡: not above head-only" in md
    assert "50.5 ± 0.7 ⌊2/2⌋ ‡" in html
    table2 = "Table 2 — tiny, K=100: UniPELT vs its submodules"
    assert md.split(f"### {table2}")[1].splitlines()[2] == "| method | SST2 |"  # RTE left out
    assert _row(md, table2, "unipelt-ap") == ["unipelt-ap", "**88.0 ± 0.0**"]
    assert "Left out: RTE (not learnable at this K on this backbone)." in md


def test_training_fit_against_the_runs_own_constant_loss(tmp_path):
    from unipelt.harness import floors
    from unipelt.harness.record import EpochLog

    from .conftest import GLUE_FIXTURE

    constant = floors.run_constant_loss("sst2", 16, 111, 20, str(GLUE_FIXTURE))
    with Store(tmp_path / "s.sqlite") as store:
        for method, losses in (("lora", (0.9, 0.5 * constant)), ("adapter", (constant, 0.95 * constant))):
            record = _record(method, "sst2", 111, 0.6)
            spec = replace(record.spec, k=16, dev_size=20, glue_dir=str(GLUE_FIXTURE))
            epochs = [EpochLog(epoch=i + 1, train_loss=x, dev_metric=0.5) for i, x in enumerate(losses)]
            store.write(replace(record, spec=spec, epochs=epochs))
        md = report.markdown(report.build(store))
    title = "Training fit — tiny, K=16"
    assert _row(md, title, "lora") == ["lora", "1/1 (0.50)"]  # lowest loss half the constant's: fits
    assert _row(md, title, "adapter") == ["adapter", "0/1 (0.95)"]  # above 0.9x: does not


def test_terminal_tables_are_plain_text():
    """What `unipelt demo` prints: no Markdown or HTML marks (<u>...</u> printed as is before)."""
    from unipelt.harness.report import table_text
    from unipelt.harness.tables import Cell, Table

    rows = ((Cell("lora"), Cell("80.1", "best")), (Cell("unipelt_apl"), Cell("79.0", "second")))
    text = table_text(Table(title="Table 1", header=("method", "sst2"), rows=rows))
    assert "<u>" not in text and "**" not in text and "\\" not in text
    assert "80.1*" in text and "79.0+" in text and "unipelt_apl" in text
    assert len({len(line) for line in text.splitlines()[2:5]}) == 1  # header, rule and rows aligned


def test_each_finished_run_as_json_in_peft_method_comparison_layout(tmp_path):
    """`unipelt report` also writes runs/<task>--<method>--k<K>-seed<seed>.json, as peft's
    method_comparison logs a run: run_info, train_info, meta_info; what we do not record is null."""
    import json

    from unipelt.harness import export
    from unipelt.harness.record import EpochLog

    epochs = (EpochLog(epoch=1, train_loss=0.7, dev_metric=0.5), EpochLog(epoch=2, train_loss=0.4, dev_metric=0.75))
    params = {"trainable": 12, "total": 10}
    done = replace(_record("lora", "rte", 111, 0.69), epochs=epochs, best_epoch=2, params=params)
    done = replace(done, started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:01:30+00:00")
    failed = RunRecord(spec=replace(done.spec, method="prompt"), status="failed", reason="nan", metric="accuracy")
    with Store(tmp_path / "s.sqlite") as store:
        store.write(done)
        store.write(failed)
        [path] = export.write_runs(store, tmp_path / "runs")  # failed runs are not results
    assert path.name == "rte--lora--k100-seed111.json"
    data = json.loads(path.read_text())
    assert set(data) == {"run_info", "train_info", "meta_info"}
    assert data["run_info"]["experiment_name"] == "rte/lora/k100-seed111" and data["run_info"]["total_time"] == 90.0
    assert data["run_info"]["train_config"]["lr"] == 1e-4 and data["run_info"]["peft_config"]["methods"]
    train = data["train_info"]
    assert train["status"] == "success" and train["num_trainable_params"] == 12 and train["file_size"] is None
    assert train["metrics"] == [
        {"epoch": 1, "train_loss": 0.7, "dev_accuracy": 0.5},
        {"epoch": 2, "train_loss": 0.4, "dev_accuracy": 0.75},
        {"best_epoch": 2, "test_accuracy": 0.69},
    ]
    assert data["meta_info"]["package_info"]["unipelt-version"] == "0.1.0"


def test_a_report_written_again_into_its_folder_leaves_no_file_of_the_earlier_one(tmp_path):
    """A second run that shares the first's JSON name renames both; the first name must go, as
    must a figure the new report no longer draws, or the folder shows runs the store lacks."""
    from unipelt.harness import export

    out, record = tmp_path / "out", _record("lora", "rte", 111, 0.6)
    with Store(tmp_path / "gated.sqlite") as store:  # a UniPELT run: a figure of its gates
        store.write(record)
        store.write(_record("unipelt-apl", "rte", 111, 0.6))
        report.write(report.build(store), out)
    figures = {p.name for p in out.glob("*.png")}
    (out / "notes.png").write_bytes(b"not ours")  # a file no report wrote stays
    with Store(tmp_path / "s.sqlite") as store:
        store.write(record)
        first = export.write_runs(store, out / "runs")
        store.write(replace(record, spec=replace(record.spec, lr=1e-3)))  # the same JSON name as the first
        second = export.write_runs(store, out / "runs")
        report.write(report.build(store), out)
    assert [p.name for p in first] == ["rte--lora--k100-seed111.json"] and len(second) == 2
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == sorted(p.name for p in second)
    assert "gates_0.png" in figures and not (out / "gates_0.png").exists()
    assert (out / "metric_vs_k_0.png").exists()
    assert (out / "notes.png").exists()


def test_a_report_into_a_folder_of_the_users_removes_none_of_their_files(tmp_path):
    """--out . in a project whose store sits in runs/: the export removed every JSON file in runs/
    it had not written (a user's config), and a report.md of the user's had its PNGs removed."""
    from unipelt.harness import export

    out = tmp_path / "project"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "my-lora-r16.json").write_text('{"methods": [{"method": "lora", "r": 16}]}')
    (out / "runs" / "broken.json").write_text("{not json")
    (out / "report.md").write_text("# Our design\n\n![the architecture](architecture.png)\n")
    (out / "architecture.png").write_bytes(b"the user's figure")
    with Store(out / "runs" / "unipelt.sqlite") as store:
        store.write(_record("lora", "rte", 111, 0.6))
        export.write_runs(store, out / "runs")
        report.write(report.build(store), out)
    assert (out / "runs" / "my-lora-r16.json").exists() and (out / "runs" / "broken.json").exists()
    assert (out / "architecture.png").read_bytes() == b"the user's figure"


def test_a_config_this_version_cannot_read_is_reported_as_stored(tmp_path):
    """A store shared with a newer unipelt holds a config field this one lacks: the row split by
    config parsed every config, and the whole report failed on it."""
    import json
    import sqlite3

    with Store(tmp_path / "s.sqlite") as store:
        store.write(_record("lora", "rte", 111, 0.6))
    db = sqlite3.connect(tmp_path / "s.sqlite")
    key, spec = db.execute("SELECT run_key, spec FROM runs").fetchone()
    spec = json.loads(spec)
    spec["config"]["methods"][0]["future_knob"] = 1
    db.execute("UPDATE runs SET spec = ? WHERE run_key = ?", (json.dumps(spec), key))
    db.commit()
    db.close()
    with Store(tmp_path / "s.sqlite", readonly=True) as store:
        md = report.markdown(report.build(store))
    assert _row(md, "Table 1 — tiny, K=100", "lora")[1] == "**60.0**"
