"""``unipelt report``: the store's finished runs as Markdown (``report.md`` + PNG files) and as
one self-contained HTML file (``report.html``, figures embedded as base64)."""

from __future__ import annotations

import base64
import html
import io
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from . import floors, plots, tables
from .errors import HarnessError
from .store import Store
from .tables import Cell, Table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    name: str  # file stem
    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Report:
    tables: tuple[Table, ...]
    figures: tuple[Figure, ...]
    summary: str


# ---- rendering
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#!~])")


def md_text(text: str) -> str:
    """User-controlled text (method, config and model names, failure reasons) as literal
    Markdown: HTML is escaped, as in the HTML report, and so is every character Markdown would
    read as emphasis, a link, code or a table cell border."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)).replace("\n", " ")


def _md_cell(cell: Cell) -> str:
    text = md_text(cell.text)
    return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(cell.mark, text)


def table_markdown(table: Table) -> str:
    lines = [
        f"### {md_text(table.title)}",
        "",
        "| " + " | ".join(map(md_text, table.header)) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(table.header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [f"_{md_text(note)}_" for note in table.notes]
    return "\n".join(lines) + "\n"


_TEXT_MARKS = {"best": "*", "second": "+"}


def table_text(table: Table) -> str:
    """A table for the terminal: aligned plain text, best and second-best marked * and + (the
    Markdown's <u>...</u> and backslash escapes would print as they are)."""
    cells = [list(table.header)] + [[c.text + _TEXT_MARKS.get(c.mark, "") for c in row] for row in table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.header))]

    def line(row: list[str]) -> str:
        return "  ".join([row[0].ljust(widths[0])] + [t.rjust(w) for t, w in zip(row[1:], widths[1:])]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    notes = [*table.notes, "* best, + second best in a column"] if any(c.mark for r in table.rows for c in r) else []
    return "\n".join([table.title, "", line(cells[0]), rule, *map(line, cells[1:]), *notes]) + "\n"


def _html_cell(cell: Cell) -> str:
    text = html.escape(cell.text)
    return {"best": f"<b>{text}</b>", "second": f"<u>{text}</u>"}.get(cell.mark, text)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in table.notes)
    return (
        f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"
    )


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
    "th{background:#f3f3f3}.note{color:#555;font-size:.9em;margin:.2em 0}img{max-width:100%}"
)


def markdown(report: Report) -> str:
    parts = [TITLE, "", md_text(report.summary), ""] + [table_markdown(t) for t in report.tables]
    parts += [
        f"### {md_text(f.title)}\n\n![{md_text(f.title)}]({f.name}.png)\n"
        + (f"\n_{md_text(f.caption)}_\n" if f.caption else "")
        for f in report.figures
    ]
    return "\n".join(parts)


def html_page(report: Report) -> str:
    figures = "".join(
        f"<h3>{html.escape(f.title)}</h3><img alt='{html.escape(f.title)}' "
        f"src='data:image/png;base64,{base64.b64encode(f.png).decode()}'>"
        + (f"<p class='note'>{html.escape(f.caption)}</p>" if f.caption else "")
        for f in report.figures
    )
    tables_ = "".join(table_html(t) for t in report.tables)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>unipelt results</title><style>{CSS}</style>"
        f"</head><body><h1>unipelt results</h1><p>{html.escape(report.summary)}</p>{tables_}{figures}</body></html>"
    )


# ---- building
def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


@plots.plain_text
def _figures(runs: pd.DataFrame, gates: pd.DataFrame) -> list[Figure]:
    figures = []
    for i, model in enumerate(sorted(runs.model.unique())):
        name, sub = tables.model_name(model), runs[runs.model == model]
        figures.append(
            Figure(f"metric_vs_k_{i}", f"Test score vs K — {name}", _png(plots.metric_vs_k(sub, name)), _k_caption(sub))
        )
        sub = gates[gates.model == model]
        if not sub.empty:
            figures.append(
                Figure(f"gates_{i}", f"Mean gate value per layer — {name}", _png(plots.gate_heatmap(sub, name)))
            )
    return figures


def _k_caption(runs: pd.DataFrame) -> str:
    """Mean ± std over data seeds; what a line across K joins when settings differ per K."""
    differ = [
        f"{name} ({', '.join(f'K={k}: {tables._shown(v)}' for k, v in values.items())})"
        for name, values in tables.settings_per_k(runs).items()
    ]
    where = f" The runs differ per K in {', '.join(differ)}: each line joins them." if differ else ""
    return f"One line per method across K; mean ± std over data seeds.{where}"


def _summary(all_runs: pd.DataFrame, attempts: pd.DataFrame) -> str:
    counts = all_runs.status.value_counts().to_dict()
    versions = sorted({v["unipelt"] for v in all_runs.versions if "unipelt" in v})
    # a run's failed attempts stay in the store as history; its result is its finished attempt
    finished = set(all_runs.run_key[all_runs.status == "finished"])
    history = int(((attempts.status == "failed") & attempts.run_key.isin(finished)).sum())
    retried = f" ({history} failed attempt(s) of finished runs kept as history)" if history else ""
    return (
        f"{counts.get('finished', 0)} finished and {counts.get('failed', 0)} failed runs{retried}; unipelt "
        f"{', '.join(versions)}; generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC."
    )


def build(store: Store) -> Report:
    all_runs = store.runs()
    runs = all_runs[all_runs.status == "finished"]
    if runs.empty:
        raise HarnessError(f"results store {store.path} has no finished runs to report")
    runs = tables.with_variants(runs)
    runs = runs.join(floors.run_fits(runs, store.epochs()))  # each run's loss against a constant guess's
    gates = store.gates()
    found = [*tables.table1(runs), *tables.table2(runs), *tables.fit_tables(runs), *tables.table4(runs)]
    if (failed := tables.failures(all_runs)) is not None:
        found.append(failed)
    return Report(tuple(found), tuple(_figures(runs, gates)), _summary(all_runs, store.attempts()))


TITLE = "# unipelt results"  # report.md's first line: how a later report knows its own


def _figures_of(md: Path) -> set[str]:
    """The PNG files an earlier report.md of ours in the same folder shows (its own, beside it);
    none for a report.md of someone else's, whose figures are theirs."""
    if not md.is_file():
        return set()
    text = md.read_text(encoding="utf-8", errors="replace")
    if not text.startswith(f"{TITLE}\n"):
        return set()
    return set(re.findall(r"\]\(([A-Za-z0-9_.-]+\.png)\)", text))


def write(report: Report, out_dir: str | Path) -> Path:
    """Write report.md (+ its PNGs) and report.html into ``out_dir``; returns the directory."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        old = _figures_of(out / "report.md")
        for figure in report.figures:
            (out / f"{figure.name}.png").write_bytes(figure.png)
        for stale in old - {f"{f.name}.png" for f in report.figures}:  # a figure an earlier report drew
            (out / stale).unlink(missing_ok=True)
        (out / "report.md").write_text(markdown(report), encoding="utf-8")
        (out / "report.html").write_text(html_page(report), encoding="utf-8")
    except OSError as e:
        raise HarnessError(f"cannot write the report to {out}: {e}") from None
    log.info("wrote %s and %s", out / "report.md", out / "report.html")
    return out
