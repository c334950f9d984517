"""Find campaign runs on disk and summarise them from their stores."""
from __future__ import annotations

from pathlib import Path

from discovery.search.store import Store


def find_runs(root: Path) -> list[dict]:
    runs = []
    for db in sorted(Path(root).rglob("campaign.sqlite")):
        store = Store(db)
        try:
            meta = store.meta()
            counts = store.counts()
            best = store.db.execute("SELECT MAX(val_r2) AS r2 FROM fits").fetchone()["r2"]
        finally:
            store.close()
        runs.append({
            "run_dir": str(db.parent), "task": meta.get("task", "?"), "proposer": meta.get("proposer", "?"),
            "seed": meta.get("seed"), "status": meta.get("status", "?"),
            "evaluated": counts.get("evaluated", 0) + counts.get("failed", 0),
            "best_val_r2": meta.get("best_val_r2", best), "best_test_r2": meta.get("best_test_r2"),
        })
    return runs
