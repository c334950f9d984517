"""Run directories guarded, storage faults reported, counts and names right (issue 14, items 9-12 and 14).

Every fault ends in one line that says what to do, the run is left resumable, and a resumed run ends
exactly where an uninterrupted one does.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import signal
import sqlite3
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from discovery.cli import main
from discovery.laws import fit as fit_module
from discovery.laws.fit import FitOptions, fit_group
from discovery.laws.law import parse_law
from discovery.search.campaign import Campaign, CampaignSettings
from discovery.search.runs import find_runs
from discovery.search.store import Store
from discovery.tasks.spec import TaskError, load_task

SMALL = dict(task="parallel_scaling_law", generations=3, population=4, islands=1, children=4, fit_starts=4,
             fit_recipes=["linear"], executor="serial", seed=3)


def _settings(out: Path, **kw) -> CampaignSettings:
    return CampaignSettings(**{**SMALL, **kw}, out=str(out))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, datasets_dir) -> Path:
    """One uninterrupted run, shared: what every interrupted one must end as."""
    out = tmp_path_factory.mktemp("ref") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KEPLER_DATA_DIR", os.environ.get("KEPLER_DATA_DIR") or str(datasets_dir))
        Campaign(_settings(out)).run()
    return out


def _outcomes(run: Path) -> list[tuple]:
    store = Store(run / "campaign.sqlite", readonly=True)
    try:
        return store.outcomes()
    finally:
        store.close()


# ---- item 9: one writer, one run per folder ------------------------------------------------------------------
def _hold(out: str, ready, stop) -> None:
    campaign = Campaign(_settings(Path(out), generations=10_000, time_limit=120, fit_starts=32))
    campaign.on_progress = lambda p: (ready.set(), stop.wait(0.01) and os._exit(0))
    campaign.run()


@pytest.mark.timeout(120)
def test_a_second_writer_on_a_running_folder_gets_a_clear_message(tmp_path, capsys):
    out = tmp_path / "busy"
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    first = ctx.Process(target=_hold, args=(str(out), ready, stop))
    first.start()
    try:
        assert ready.wait(60), "the first campaign did not start"
        code = main(["discover", "parallel_scaling_law", "--out", str(out), "--generations", "10000", "--population",
                     "4", "--children", "4", "--executor", "serial", "--seed", "3", "--time-limit", "120"])
        err = capsys.readouterr().err
        assert code == 2 and "in use by another Kepler process" in err and f"pid {first.pid}" in err
    finally:
        stop.set()
        first.join(30)
        if first.is_alive():
            first.kill()


def test_out_on_another_tasks_run_is_refused(reference, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(reference, other)
    code = main(["discover", "chinchilla_approach3", "--out", str(other), "--generations", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run of task 'parallel_scaling_law'" in err and "--resume" in err
    # a partial run of another task (KeyError: 'N' before) is refused the same way
    store = Store(other / "campaign.sqlite")
    store.set_meta(status="running")
    store.close()
    (other / "best.json").unlink()
    assert main(["discover", "chinchilla_approach3", "--out", str(other), "--generations", "1"]) == 2
    assert "already holds" in capsys.readouterr().err
    # and a run with other settings of the same task (a different seed) too
    assert main(["discover", "parallel_scaling_law", "--out", str(other), "--seed", "4"]) == 2


def test_resume_of_a_missing_folder_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "run"
    assert main(["discover", "--resume", str(missing)]) == 2
    assert "not a Kepler run directory" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


# ---- item 10: storage faults are one line, the run stays resumable ----------------------------------------------
def _as_nobody(target, *args) -> tuple[int, str]:
    """Run `target` in a forked child that cannot write where root can (tests here run as root)."""
    ctx = multiprocessing.get_context("fork")
    err = tempfile.NamedTemporaryFile("w+", delete=False)

    def child() -> None:
        sys.stderr = open(err.name, "w")  # noqa: SIM115 - the CLI's console writes to sys.stderr
        if os.getuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        code = target(*args)
        sys.stderr.flush()
        os._exit(code)

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(60)
    err.seek(0)
    return proc.exitcode, err.read()


def test_a_read_only_folder_is_one_line_with_what_to_do(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    code, err = _as_nobody(main, ["discover", "parallel_scaling_law", "--out", str(folder / "run"),
                                  "--generations", "1", "--executor", "serial"])
    assert code == 2, err
    assert "cannot write to" in err and "writable" in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_is_one_line_with_what_to_do(reference, tmp_path, capsys, damage):
    run = tmp_path / "damaged"
    shutil.copytree(reference, run)
    db = run / "campaign.sqlite"
    if damage == "garbage":
        db.write_bytes(b"this is not a database, " * 100)
    else:
        db.write_bytes(db.read_bytes()[:6000])
    for p in (run / "campaign.sqlite-wal", run / "campaign.sqlite-shm", run / "best.json"):
        p.unlink(missing_ok=True)
    code = main(["discover", "--resume", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "damaged" in err and "move it away" in err and "Traceback" not in err
    [listed] = [r for r in find_runs(tmp_path) if r["run_dir"] == str(run)]
    assert listed["status"].startswith("unreadable")


def _run_on_a_small_disk(out: str, room: int, report: str) -> None:
    """In a forked child: the campaign with files limited to `room` bytes more than they hold (a full disk)."""
    biggest = max(p.stat().st_size for p in Path(out).iterdir())
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + room, biggest + room))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG), as on a full disk
    try:
        Campaign(_settings(Path(out))).run()
        message = "finished"
    except ValueError as exc:
        message = str(exc)
    Path(report).write_text(message)
    os._exit(0)


@pytest.mark.timeout(180)
def test_a_full_disk_stops_the_run_resumable_and_it_resumes_identically(reference, tmp_path):
    out = tmp_path / "full"
    Campaign(_settings(out)).close()  # created: its files exist, the disk fills up from here
    report = tmp_path / "report.txt"
    child = multiprocessing.get_context("fork").Process(target=_run_on_a_small_disk,
                                                        args=(str(out), 24_000, str(report)))
    child.start()
    child.join(120)
    message = report.read_text()
    assert "disk is full" in message and f"kepler discover --resume {out}" in message and "\n" not in message
    [listed] = [r for r in find_runs(tmp_path) if r["run_dir"] == str(out)]
    assert listed["status"] == "interrupted" and 0 < listed["evaluated"] < 12
    result = Campaign.resume(out).run()  # space is free again
    assert _outcomes(out) == _outcomes(reference)
    assert result["best"] == json.loads((reference / "best.json").read_text())["best"]


# ---- item 11: counts after a mid-generation resume -----------------------------------------------------------
def test_best_json_counts_right_after_a_mid_generation_resume(reference, tmp_path):
    out = tmp_path / "cut"
    writes = {"n": 0}

    def stop_mid_generation(progress) -> None:
        writes["n"] += 1
        if progress.generation == 1 and writes["n"] % 7 == 0:
            raise KeyboardInterrupt  # as a kill would, half way through generation 1

    with pytest.raises(KeyboardInterrupt):
        Campaign(_settings(out), on_progress=stop_mid_generation).run()
    result = Campaign.resume(out).run()
    con = sqlite3.connect(out / "campaign.sqlite")
    stored = dict(con.execute("SELECT status, COUNT(*) FROM candidates GROUP BY status").fetchall())
    con.close()
    assert result["candidates_evaluated"] == stored.get("evaluated", 0) + stored.get("failed", 0)
    assert result["candidates_rejected"] == stored.get("rejected", 0)
    expected = json.loads((reference / "best.json").read_text())
    for key in ("candidates_evaluated", "candidates_rejected", "duplicates_skipped"):
        assert result[key] == expected[key], key


# ---- item 12: a task name is a plain name, never a path --------------------------------------------------------
def test_a_task_named_dot_dot_is_refused_before_any_path_is_built(tmp_path, monkeypatch, capsys):
    tasks, data = tmp_path / "tasks", tmp_path / "data"
    tasks.mkdir()
    data.mkdir()
    rows = "".join(f"{10**i},{1 + 1 / i},{'train' if i < 6 else 'test'}\n" for i in range(1, 9))
    (tmp_path / "data.csv").write_text("n,loss,split\n" + rows)  # a valid data set, outside the data folder
    (tasks / "...toml").write_text('''name = ".."
title = "outside the data folder"
paper = "x"
targets = ["loss"]
converter = "tidy_csv"
citation = "x"
[[variables]]
column = "n"
symbol = "N"
[split]
rule = "x"
validation_axis = "n"
[[sources]]
file = "data.csv"
url = "https://example.org/data.csv"
sha256 = "''' + "0" * 64 + '''"
format = "csv"
''')
    monkeypatch.setenv("KEPLER_TASKS_DIR", str(tasks))
    monkeypatch.setenv("KEPLER_DATA_DIR", str(data))
    assert main(["fit", "..", "A*N**b", "--starts", "2"]) == 2
    assert "not a plain name" in capsys.readouterr().err
    with pytest.raises(TaskError, match="plain name"):
        load_task(str(tasks / "...toml"))
    with pytest.raises(TaskError, match="plain name"):
        load_task("../tasks/x")


# ---- item 14: memory of a fit on many rows --------------------------------------------------------------------
def _planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.exp(rng.uniform(np.log(1e7), np.log(1e10), n)),
                         np.exp(rng.uniform(np.log(1e9), np.log(1e12), n))])
    y = (1.7 + 400 / X[:, 0] ** 0.34 + 410 / X[:, 1] ** 0.28) * (1 + 0.01 * rng.standard_normal(n))
    return X, y


def test_a_fit_on_many_rows_screens_its_starts_in_bounded_memory(monkeypatch):
    # scaled down from the million rows (benchmarks/fit_memory.py measures those): temporaries of at most
    # 2**18 numbers (2 MB) instead of 16 MB, on 10,000 rows
    monkeypatch.setattr(fit_module, "SCREEN_CHUNK_ELEMENTS", 1 << 18, raising=False)
    law = parse_law("E + A/N**alpha + B/D**beta", ["N", "D"])
    X, y = _planted(10_000)
    opts = FitOptions(n_starts=128, max_nfev=3, polish=False, time_limit=300)
    _ = law.compile()  # compiled before memory is traced
    tracemalloc.start()
    try:
        fit = fit_group(law, X, y, None, opts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fit.ok, fit.reason
    # 129 starts x 10,000 rows x 3 amplitudes is 31 MB per temporary: screened all at once, the peak was ~130 MB
    assert peak < 30e6, f"peak {peak / 1e6:.0f} MB"


def test_screening_in_chunks_ranks_the_starts_exactly_as_in_one_pass(monkeypatch):
    law = parse_law("E + A/N**alpha + B/D**beta", ["N", "D"])
    X, y = _planted(3000, seed=1)
    opts = FitOptions(n_starts=64)
    init, lo, hi = fit_module._specs_for(law, None)
    starts = fit_module._sample_starts(init, lo, hi, opts.n_starts, opts.seed)
    one = fit_module._screen(law, X, y, starts, lo, hi, opts)
    monkeypatch.setattr(fit_module, "SCREEN_CHUNK_ELEMENTS", 3000 * 3 * 5)  # 5 starts a chunk
    np.testing.assert_array_equal(fit_module._screen(law, X, y, starts, lo, hi, opts), one)
