"""Find campaign runs on disk and summarise them from their stores (read only: listing writes nothing).

A run written with `--out` outside `results/` is remembered in a small index (`runs.txt` in Kepler's cache
folder, `KEPLER_CACHE_DIR` or ~/.cache/kepler), so `kepler runs` lists it with the runs under `results/`.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from discovery.search.rundir import in_use
from discovery.search.store import StorageError, Store


def index_path() -> Path:
    base = os.environ.get("KEPLER_CACHE_DIR") or None
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "kepler") / "runs.txt"


def remember(run_dir: Path) -> None:
    """Add a run directory to the index (best effort: an unwritable cache only means it is not listed)."""
    path = index_path()
    line = str(Path(run_dir).resolve())
    try:
        if path.is_file() and line in path.read_text(encoding="utf-8").splitlines():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError:
        pass


def remembered() -> list[Path]:
    """The indexed run directories that still exist."""
    try:
        lines = index_path().read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [Path(p) for p in dict.fromkeys(lines) if p.strip() and (Path(p) / "campaign.sqlite").is_file()]


def find_runs(*roots: Path) -> list[dict]:
    """Every run under the given folders (a run directory itself may be given), each once."""
    runs, seen = [], set()
    for root in roots:
        for db in sorted(Path(root).rglob("campaign.sqlite")):
            key = db.resolve()
            if key in seen:
                continue
            seen.add(key)
            runs.append(summarise(db))
    return runs


def summarise(db: Path) -> dict:
    try:
        store = Store(db, readonly=True)
        try:
            meta = store.meta()
            counts = store.counts()
            best = store.db.execute("SELECT MAX(val_r2) AS r2 FROM fits").fetchone()["r2"]
        finally:
            store.close()
    except (StorageError, sqlite3.Error) as exc:  # a damaged store is listed as such, not a crash
        return {"run_dir": str(db.parent), "task": "?", "proposer": "?", "seed": None,
                "status": f"unreadable: {' '.join(str(exc).split())[:120]}", "evaluated": 0,
                "best_val_r2": None, "best_test_r2": None}
    status = meta.get("status", "?")
    if status == "running" and not in_use(db.parent):
        status = "interrupted"  # killed, or stopped by a storage error: nobody holds its lock
    return {
        "run_dir": str(db.parent), "task": meta.get("task", "?"), "proposer": meta.get("proposer", "?"),
        "seed": meta.get("seed"), "status": status,
        "evaluated": counts.get("evaluated", 0) + counts.get("failed", 0),
        "best_val_r2": meta.get("best_val_r2", best), "best_test_r2": meta.get("best_test_r2"),
    }
