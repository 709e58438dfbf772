"""What the GPU run's store holds, with sqlite3 only (no torch): fast enough to call between sweeps.

    python summary.py STORE --count      the number of finished runs
    python summary.py STORE --clear      drop leftover run claims (a store copied from an
                                         earlier machine: its claims name processes gone)
    python summary.py STORE              a table per task, K and method: finished and failed
                                         runs, mean and sd of the test metric, mean epochs and
                                         s/step; then fold the WAL into the file so one file
                                         (STORE itself) holds every run
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def tables(db) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    db = sqlite3.connect(path, timeout=60, isolation_level=None) if path.is_file() else None
    if db is None or "runs" not in tables(db):
        print(0 if "--count" in argv else f"[gpu] store {path}: no runs")
        return 0
    if "--count" in argv:
        print(db.execute("SELECT COUNT(*) FROM runs WHERE status = 'finished'").fetchone()[0])
        return 0
    if "--clear" in argv:
        if "leases" in tables(db):
            n = db.execute("DELETE FROM leases").rowcount
            print(f"[gpu] store {path}: {n} leftover claim(s) cleared")
        return 0
    cells = defaultdict(lambda: {"finished": [], "failed": 0, "epochs": [], "step": []})
    rows = db.execute(
        "SELECT r.task, r.k, r.method, r.status, r.test_metric, r.train_s_per_step, r.metric, "
        "(SELECT COUNT(*) FROM epochs e WHERE e.run_key = r.run_key) FROM runs r"
    ).fetchall()
    for task, k, method, status, test, step, metric, epochs in rows:
        cell = cells[(task, int(k) if k.isdigit() else k, method, metric)]
        if status == "finished":
            cell["finished"].append(100 * test)
            cell["epochs"].append(epochs)
            if step:
                cell["step"].append(step)
        else:
            cell["failed"] += 1
    print(f"[gpu] {path}: {sum(len(c['finished']) for c in cells.values())} finished, "
          f"{sum(c['failed'] for c in cells.values())} failed runs")
    print(f"{'task':5} {'K':>5} {'method':18} {'fin':>3} {'fail':>4} {'test':>13} {'epochs':>6} {'s/step':>7}")
    for (task, k, method, metric), c in sorted(cells.items(), key=lambda x: (x[0][0], str(x[0][1]).zfill(6), x[0][2])):
        f = c["finished"]
        score = f"{statistics.mean(f):6.1f} ± {statistics.stdev(f):4.1f}" if len(f) > 1 else (
            f"{f[0]:6.1f}       " if f else "      -      ")
        epochs = f"{statistics.mean(c['epochs']):6.1f}" if c["epochs"] else "     -"
        step = f"{statistics.mean(c['step']):7.3f}" if c["step"] else "      -"
        print(f"{task:5} {k!s:>5} {method:18} {len(f):3d} {c['failed']:4d} {score:>13} {epochs} {step}")
    reasons = db.execute("SELECT reason, COUNT(*) FROM runs WHERE status = 'failed' GROUP BY reason").fetchall()
    for reason, n in reasons:
        print(f"[gpu] failed ×{n}: {reason[:200]}")
    heads = db.execute("SELECT json_extract(spec, '$.head'), json_extract(spec, '$.head_lr'), model, COUNT(*) "
                       "FROM runs GROUP BY 1, 2, 3").fetchall()
    for head, head_lr, model, n in heads:
        print(f"[gpu] {n} runs: head {head}, head_lr {head_lr}, model {model}")
    versions = {r[0] for r in db.execute("SELECT versions FROM runs")}
    for v in sorted(versions)[:3]:
        print(f"[gpu] versions: {json.loads(v)}")
    # one file: fold the write-ahead log in and leave rollback-journal mode (the store's next
    # writer switches it back to WAL)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode = DELETE")
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
