"""Campaigns on real data: reproducible, resumable after kill -9, and blind to the test split."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from discovery.search.campaign import Campaign, CampaignSettings
from discovery.search.store import Store
from evaluators import protocol as protocol_module

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(generations=3, population=6, islands=2, children=5, fit_starts=16, executor="serial")


def _run(tmp_path: Path, name: str, task: str = "parallel_scaling_law", **kw) -> dict:
    settings = CampaignSettings(task=task, **{**SMALL, **kw}, out=str(tmp_path / name))
    return Campaign(settings).run()


def test_same_seed_gives_the_same_best_law_and_constants(tmp_path):
    a = _run(tmp_path, "a", seed=7)
    b = _run(tmp_path, "b", seed=7)
    assert a["best"]["formula"] == b["best"]["formula"]
    assert a["best"]["constants"] == b["best"]["constants"]
    assert a["best"]["test"] == b["best"]["test"]
    c = _run(tmp_path, "c", seed=8)
    assert c["candidates_evaluated"] > 0


def test_best_json_holds_what_a_paper_needs(tmp_path):
    result = _run(tmp_path, "r", task="sft_scaling_law", generations=1)  # 42 groups: one generation is enough
    on_disk = json.loads((tmp_path / "r" / "best.json").read_text())
    assert on_disk["task"] == "sft_scaling_law"
    best = on_disk["best"]
    assert best["formula"] and best["canonical"]
    assert len(best["constants"]) == 42  # one set per group
    for split in ("validation", "test"):
        assert set(best[split]) >= {"r2", "nmse", "nmae"}
    assert on_disk["human"] and "test" in on_disk["human"][0]
    assert on_disk["candidates_evaluated"] == result["candidates_evaluated"] > 0
    assert "llm" in on_disk and on_disk["wall_seconds"] >= 0


def test_test_split_is_read_only_by_the_final_report(tmp_path, monkeypatch):
    reads: list[tuple[str, int]] = []
    real = protocol_module.Protocol.final_test

    def spy(self, purpose):
        store = sqlite3.connect(tmp_path / "spy" / "campaign.sqlite")
        done = store.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        reads.append((purpose, done))
        return real(self, purpose)

    monkeypatch.setattr(protocol_module.Protocol, "final_test", spy)
    _run(tmp_path, "spy", generations=3)
    assert reads, "the final report must score on test"
    assert all("final report" in purpose for purpose, _ in reads)
    assert all(done == 3 for _, done in reads), "test was read before the search had finished"


def test_protocol_keeps_test_rows_out_of_fit_and_validation():
    from discovery.tasks.data import load_frame
    from discovery.tasks.spec import load_task
    from evaluators.protocol import Protocol

    task = load_task("sft_scaling_law")
    frame = load_frame(task)
    p = Protocol(task, frame)
    test_rows = set(frame.index[frame["split"] == "test"])
    for part in (p.fit_part, p.validation, p.train):
        assert not test_rows & set(part.rows.tolist())
    assert not any(isinstance(v, type(p.train)) and v.split == "test" for v in vars(p).values())
    # validation = the largest-scale train rows of each group
    for g in p.validation.group_names:
        val_max = p.validation.X[p.validation.groups == g, 0].min()
        fit_max = p.fit_part.X[p.fit_part.groups == g, 0].max()
        assert val_max > fit_max


def test_a_corner_test_split_gets_a_validation_of_corners():
    """lr_bsz's test split is the largest model at its largest budget: validation holds every model size's
    rows at its own largest budget, and the fit part keeps each size's smaller budgets."""
    import numpy as np

    from discovery.tasks.data import load_frame
    from discovery.tasks.spec import SplitSpec, load_task
    from evaluators.protocol import Protocol

    task = load_task("lr_bsz_scaling_law")
    p = Protocol(task, load_frame(task))
    n, d = task.columns.index("non_embedding_param_size"), task.columns.index("data_size")
    sizes = np.unique(p.train.X[:, n])
    assert set(np.unique(p.validation.X[:, n])) == set(sizes)
    for size in sizes:
        val_d = np.unique(p.validation.X[p.validation.X[:, n] == size, d])
        fit_d = p.fit_part.X[p.fit_part.X[:, n] == size, d]
        assert len(val_d) == 1 and len(fit_d) and fit_d.max() < val_d[0]
    assert len(np.unique(p.validation_blocks)) == len(sizes)  # scored size by size, as the test split will be
    assert "largest `data_size`" in task.split.describe_validation()
    with pytest.raises(ValueError, match="validation_per"):
        SplitSpec(rule="-", validation_axis="data_size", validation_rule="largest_per")


def _launch(out: Path, generations: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "discovery", "discover", "moe_scaling_law", "--generations", str(generations),
           "--population", "6", "--children", "6", "--seed", "3", "--out", str(out)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())


def _slots(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    rows = con.execute("SELECT generation, island, slot, canonical_hash, status FROM candidates "
                       "ORDER BY generation, island, slot").fetchall()
    con.close()
    return rows


@pytest.mark.timeout(240)
def test_kill_9_then_resume_loses_nothing_and_counts_nothing_twice(tmp_path):
    gens = 4
    reference = tmp_path / "reference"
    proc = _launch(reference, gens)
    assert proc.wait(timeout=200) == 0, proc.stderr.read().decode()[-2000:]
    expected = _slots(reference / "campaign.sqlite")

    killed = tmp_path / "killed"
    proc = _launch(killed, gens)
    db = killed / "campaign.sqlite"
    deadline = time.monotonic() + 60
    target = random.Random(11).randint(5, max(6, len(expected) // 2))
    while time.monotonic() < deadline:
        if db.exists():
            try:
                if len(_slots(db)) >= target:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _slots(db)
    assert 0 < len(before) < len(expected), "the kill must land mid-run"

    resumed = subprocess.run([sys.executable, "-m", "discovery", "discover", "--resume", str(killed)], cwd=REPO,
                             capture_output=True, timeout=200)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    after = _slots(db)
    assert after[: len(before)] == before, "nothing written before the kill was lost or changed"
    assert after == expected, "the resumed run equals an uninterrupted one: no gap, no duplicate"
    store = Store(db)
    assert store.last_generation()["generation"] == gens - 1
    assert store.meta()["status"] == "finished"
    best_killed = json.loads((killed / "best.json").read_text())["best"]
    best_ref = json.loads((reference / "best.json").read_text())["best"]
    assert best_killed["formula"] == best_ref["formula"]
    assert best_killed["test"] == best_ref["test"]
