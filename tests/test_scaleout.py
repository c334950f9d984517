"""Scale-out: results do not depend on where fits ran; a dead worker loses nothing; sweeps resume.

The dask tests need the optional extra (`pip install -e ".[dask]"`) and are skipped without it.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from discovery.search.campaign import Campaign, CampaignSettings
from discovery.search.executors import DASK_INSTALL, DaskUnavailable, FitData, make_executor
from discovery.search.store import Store
from discovery.search.sweep import Sweep, make_sweep_settings, parse_seeds, parse_tasks, run_campaign

REPO = Path(__file__).resolve().parent.parent
TASK = "parallel_scaling_law"
SMALL = dict(generations=2, population=6, islands=2, children=5, fit_starts=16, seed=5)
NEEDS_DASK = "dask.distributed is not installed; these tests need the extra: pip install -e \".[dask]\""


def _campaign(out: Path, executor: str, workers: int | None = None, on_progress=None) -> dict:
    settings = CampaignSettings(task=TASK, **SMALL, executor=executor, workers=workers, out=str(out))
    campaign = Campaign(settings, on_progress=on_progress)
    try:
        return campaign.run()
    finally:
        campaign.close()


def _table(run_dir: Path) -> list[tuple]:
    """Every candidate slot with what it scored; not the timings."""
    store = Store(run_dir / "campaign.sqlite")
    try:
        return store.outcomes()
    finally:
        store.close()


def _same_result(a: dict, b: dict) -> None:
    for key in ("formula", "constants", "validation", "test"):
        assert a["best"][key] == b["best"][key], key
    assert [r["formula"] for r in a["pareto_front"]] == [r["formula"] for r in b["pareto_front"]]
    assert a["candidates_evaluated"] == b["candidates_evaluated"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, datasets_dir) -> tuple[Path, dict]:
    """One uninterrupted run in this process: what every other placement must reproduce."""
    out = tmp_path_factory.mktemp("scaleout") / "serial"
    with pytest.MonkeyPatch.context() as mp:  # module scope: set up before conftest's per-test data dir
        if not os.environ.get("KEPLER_DATA_DIR"):
            mp.setenv("KEPLER_DATA_DIR", str(datasets_dir))
        return out, _campaign(out, "serial")


# --- no dask installed --------------------------------------------------------------------------
def test_without_dask_the_error_names_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now raises ImportError
    data = FitData(["x"], ["y"], None, None)
    with pytest.raises(DaskUnavailable) as exc:
        make_executor("dask", data, workers=1)
    assert DASK_INSTALL == 'pip install -e ".[dask]"'
    assert DASK_INSTALL in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DaskUnavailable, match=r'pip install -e "\.\[dask\]"'):
        _campaign(tmp_path / "run", "dask", workers=1)

    from discovery.cli import main

    code = main(["sweep", "--tasks", TASK, "--executor", "dask", "--out", str(tmp_path / "sweep")])
    err = capsys.readouterr().err
    assert code == 2
    assert 'pip install -e ".[dask]"' in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sweep").exists(), "nothing is created before the executor is known to work"


# --- the same results wherever the fits ran ----------------------------------------------------
def test_local_pool_gives_the_serial_results(tmp_path, reference):
    ref_dir, ref = reference
    result = _campaign(tmp_path / "local", "local", workers=2)
    _same_result(result, ref)
    assert _table(tmp_path / "local") == _table(ref_dir)


@pytest.mark.parametrize("workers", [1, 4])
def test_dask_gives_the_serial_results(tmp_path, reference, workers):
    pytest.importorskip("distributed", reason=NEEDS_DASK)
    ref_dir, ref = reference
    result = _campaign(tmp_path / f"dask{workers}", "dask", workers=workers)
    _same_result(result, ref)
    assert _table(tmp_path / f"dask{workers}") == _table(ref_dir)


def test_dask_scatters_the_data_once_and_sends_only_the_jobs():
    """Data goes to the cluster once (to every worker); a task carries FitJobs only, several per task (large
    chunks first, single fits last) once fits are known to be short; outcomes come back in submission order."""
    pytest.importorskip("distributed", reason=NEEDS_DASK)
    from discovery.laws.fit import FitOptions
    from discovery.search.executors import DaskExecutor, FitJob, run_fit
    from discovery.tasks.data import load_frame
    from discovery.tasks.spec import load_task
    from evaluators.protocol import Protocol

    class FakeFuture:
        status = "finished"

        def __init__(self, value):
            self.value = value

        def exception(self, timeout=None):
            return None

        def release(self):
            pass

        def cancel(self):
            pass

    class FakeClient:  # runs tasks inline; records what would travel
        def __init__(self):
            self.scattered, self.submitted = [], []

        def scatter(self, data, broadcast=False, hash=True):
            self.scattered.append((data, broadcast))
            return FakeFuture(data)

        def map(self, fn, chunks, key, data, **kw):
            assert len(key) == len(set(key)) == len(chunks)
            self.submitted += [(data, chunk) for chunk in chunks]
            return [FakeFuture(fn(chunk, data.value)) for chunk in chunks]

        def gather(self, futures):
            return [f.value for f in futures]

        def nthreads(self):
            return {"tcp://a": 1, "tcp://b": 1}

    task = load_task(TASK)
    protocol = Protocol(task, load_frame(task))
    data = FitData(task.symbols, task.targets, protocol.fit_part, protocol.validation)
    client = FakeClient()
    ex = DaskExecutor(data, client=client)
    forms = ["a*N**b + c", "a*P**b + c", "a*N**b*P**c", "a*N**b*P**c + d", "a*log(N) + c", "a*N**b + c*P",
             "a/N**b + c", "a*P**b*N**c + d"]
    jobs = [FitJob(f, None, FitOptions(n_starts=4), None) for f in forms]
    first = list(ex.map(jobs[:3]))
    assert [len(chunk) for _, chunk in client.submitted] == [1, 1, 1], "one fit per task until fits are timed"
    ex.chunk_seconds = 1e3  # every fit now counts as short, however fast this machine is
    second = list(ex.map(jobs * 2))
    sizes = [len(chunk) for _, chunk in client.submitted[3:]]
    assert sizes == [6, 4, 2, 2, 1, 1], "short fits travel in guided chunks: large first, single fits last"
    ex.chunk_seconds = 0.0  # every fit now counts as long: one per task
    third = list(ex.map(jobs))
    assert [len(chunk) for _, chunk in client.submitted[9:]] == [1] * len(jobs), "long fits go one per task"
    assert len(client.scattered) == 1 and client.scattered[0][1] is True, "data scattered once, to every worker"
    assert all(isinstance(d, FakeFuture) for d, _ in client.submitted), "the data goes by reference"
    assert all(type(j) is FitJob for _, chunk in client.submitted for j in chunk), "only FitJobs travel"
    expected = [run_fit(data, j) for j in jobs]
    assert [(o.val_r2, o.constants) for o in first + second + third] == \
        [(o.val_r2, o.constants) for o in expected[:3] + expected * 3], "submission order"
    ex.close()


# --- a worker dies mid-run ------------------------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [2, 1])
def test_killed_dask_worker_loses_nothing(tmp_path, reference, monkeypatch, workers):
    """SIGKILL a worker that holds fits of generation 1: its fits are redone elsewhere (with one worker, on
    the restarted one, the scattered data sent again); the store equals an uninterrupted run's."""
    pytest.importorskip("distributed", reason=NEEDS_DASK)
    from discovery.search import executors

    ref_dir, ref = reference
    killed: list[tuple[int, list]] = []
    real_map = executors.DaskExecutor.map

    def slow_fits(seconds: float) -> None:
        """Runs inside each worker process: its fits take `seconds` longer, so the kill below finds them
        there on any machine (on a fast one, a generation's fits could all be done before it looks)."""
        from discovery.search import executors as worker_side

        fit = getattr(worker_side.run_fit, "unslowed", worker_side.run_fit)
        if seconds:
            def slowed(data, job):
                time.sleep(seconds)
                return fit(data, job)
            slowed.unslowed = fit
            worker_side.run_fit = slowed
        else:
            worker_side.run_fit = fit

    def map_and_kill(self, jobs, deadline=None):
        jobs = list(jobs)
        pids = self.worker_pids()
        generation_1 = not killed and self._count > 0  # generation 0 went out: fit times are known
        if generation_1:
            self.client.run(slow_fits, 0.5)
        results = real_map(self, jobs, deadline)
        if generation_1:
            deadline = time.monotonic() + 30
            busy = {}
            while not busy and time.monotonic() < deadline:
                busy = {w: keys for w, keys in self.client.processing().items()
                        if any(str(k).startswith("kepler-fit-") for k in keys)}
                time.sleep(0.002)
            victim = max(busy, key=lambda w: len(busy[w])) if busy else next(iter(pids))
            os.kill(pids[victim], signal.SIGKILL)
            killed.append((pids[victim], list(busy.get(victim, ()))))
            if survivors := [w for w in pids if w != victim]:
                self.client.run(slow_fits, 0.0, workers=survivors)
        return results

    monkeypatch.setattr(executors.DaskExecutor, "map", map_and_kill)
    out = tmp_path / f"killed{workers}"
    result = _campaign(out, "dask", workers=workers)
    assert killed and killed[0][1], "the kill must land while the worker holds fits"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0][0], 0)
    table = _table(out)
    slots = [row[:3] for row in table]
    assert len(slots) == len(set(slots)), "no slot written twice"
    assert table == _table(ref_dir), "no gap, no duplicate, same scores as an uninterrupted run"
    _same_result(result, ref)


# --- sweeps --------------------------------------------------------------------------------------
def test_grid_parsing():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,5") == [0, 2, 5]
    assert parse_seeds("3") == [3] and parse_seeds([1, 1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="seeds"):
        parse_seeds("4-1")
    assert parse_tasks("vocab_scaling_law, sft_scaling_law") == ["vocab_scaling_law", "sft_scaling_law"]
    sld = parse_tasks("sldbench")
    assert len(sld) == 8 and "parallel_scaling_law" in sld and "chinchilla_approach3" not in sld
    assert set(parse_tasks("all")) >= set(sld)
    with pytest.raises(ValueError):
        parse_tasks("no_such_task")
    s = make_sweep_settings(tasks="sldbench", seeds="0-1", proposers=["offline"], generations=2, executor="dask",
                            workers=2)
    assert len(s.runs()) == 16 and s.campaign == {"generations": 2}
    assert s.campaign_settings("vocab_scaling_law", 1, "offline", Path("x")).executor == "serial"
    with pytest.raises(ValueError, match="generations"):
        make_sweep_settings(tasks=TASK, generations=0)


def test_sweep_file(tmp_path):
    from discovery.search.sweep import load_sweep_file

    path = tmp_path / "sweep.toml"
    path.write_text('tasks = "parallel_scaling_law,vocab_scaling_law"\nseeds = "0-2"\nproposer = "offline"\n'
                    'executor = "serial"\ngenerations = 2\n[campaign]\npopulation = 6\n')
    s = load_sweep_file(path, seeds="4", islands=1)
    assert s.tasks == ["parallel_scaling_law", "vocab_scaling_law"] and s.seeds == [4]
    assert s.campaign == {"population": 6, "generations": 2, "islands": 1}
    path.write_text('tasks = "all"\n[campaign]\ntask = "x"\n')
    with pytest.raises(ValueError, match="set by the sweep"):
        load_sweep_file(path)


def _runs(sweep_dir: Path) -> dict[tuple, sqlite3.Row]:
    con = sqlite3.connect(sweep_dir / "sweep.sqlite", timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return {(r["task"], r["seed"]): r for r in con.execute("SELECT * FROM runs")}
    finally:
        con.close()


@pytest.mark.timeout(180)
def test_sweep_killed_then_resumed_keeps_finished_runs(tmp_path):
    """kill -9 a sweep while its second run is mid-campaign; --resume keeps the first run as it was and
    finishes the second from its own store, equal to an uninterrupted campaign."""
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "discovery", "sweep", "--tasks", f"{TASK},vocab_scaling_law",
           "--seeds", "1", "--generations", "3", "--population", "6", "--children", "5", "--fit-starts", "16",
           "--executor", "serial", "--out", str(sweep_dir), "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    second = sweep_dir / "vocab_scaling_law" / "offline-seed1" / "campaign.sqlite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if second.exists() and sqlite3.connect(second).execute("SELECT COUNT(*) FROM candidates").fetchone()[0]:
                break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _runs(sweep_dir)
    assert before[(TASK, 1)]["status"] == "finished"
    assert before[("vocab_scaling_law", 1)]["status"] != "finished", "the kill must land mid-sweep"
    first_dir = sweep_dir / TASK / "offline-seed1"
    first_best = (first_dir / "best.json").read_bytes()
    first_stamp = (first_dir / "best.json").stat().st_mtime_ns
    first_rows = _table(first_dir)

    sweep = Sweep.resume(sweep_dir)
    seen = []
    table = sweep.run(on_progress=lambda p: seen.append((p.done, p.running, p.queued)))
    sweep.close()
    after = _runs(sweep_dir)
    assert all(r["status"] == "finished" for r in after.values())
    assert (first_dir / "best.json").read_bytes() == first_best
    assert (first_dir / "best.json").stat().st_mtime_ns == first_stamp, "a finished run is not run again"
    assert _table(first_dir) == first_rows
    assert seen[0][0] == 1 and seen[-1] == (2, 0, 0)

    settings = Sweep.resume(sweep_dir).settings.campaign_settings("vocab_scaling_law", 1, "offline",
                                                                  tmp_path / "uninterrupted")
    fresh = run_campaign(settings.model_dump(), str(tmp_path / "uninterrupted"))
    assert _table(sweep_dir / "vocab_scaling_law" / "offline-seed1") == _table(tmp_path / "uninterrupted")
    assert after[("vocab_scaling_law", 1)]["best_test_r2"] == fresh["best_test_r2"]

    by_task = {r["task"]: r for r in table}
    assert by_task[TASK]["runs_finished"] == 1 and by_task[TASK]["test_r2_mean"] == after[(TASK, 1)]["best_test_r2"]
    assert by_task[TASK]["human_law"] and by_task[TASK]["human_test_r2"] > 0.9
    md = (sweep_dir / "sweep_table.md").read_text()
    assert "| parallel_scaling_law | offline | 1/1 |" in md and " ± " in md
    assert json.loads((sweep_dir / "sweep_table.json").read_text())["tasks"] == json.loads(json.dumps(table))


@pytest.mark.timeout(120)
def test_sweep_on_dask_equals_the_sweep_in_one_process(tmp_path):
    pytest.importorskip("distributed", reason=NEEDS_DASK)
    grid = dict(tasks=TASK, seeds="0-1", generations=1, population=6, children=4, fit_starts=16)
    here = Sweep.create(make_sweep_settings(**grid, executor="serial"), tmp_path / "here")
    there = Sweep.create(make_sweep_settings(**grid, executor="dask", workers=2), tmp_path / "there")
    try:
        assert _results(here.run()) == _results(there.run())
        for seed in (0, 1):
            run = f"{TASK}/offline-seed{seed}"
            assert _table(tmp_path / "here" / run) == _table(tmp_path / "there" / run)
    finally:
        here.close()
        there.close()


def _results(table: list[dict]) -> list[dict]:
    """A sweep table without its timings and memory, which depend on where the runs ran."""
    return [{k: v for k, v in row.items() if k not in ("wall_seconds_max", "peak_rss_mb_max")} for row in table]


@pytest.mark.timeout(180)
def test_a_pooled_sweep_runs_each_campaign_in_its_own_process_and_reports_its_peak_memory(tmp_path):
    """The local pool gives every campaign a fresh process: the table shows each run's peak memory (a process
    shared by several campaigns could not say whose it was), and the results are the serial sweep's."""
    grid = dict(tasks=TASK, seeds="0-2", generations=1, population=6, children=4, fit_starts=16)
    pooled = Sweep.create(make_sweep_settings(**grid, executor="local", workers=2), tmp_path / "pooled")
    serial = Sweep.create(make_sweep_settings(**grid, executor="serial"), tmp_path / "serial")
    try:
        table = pooled.run()
        assert _results(table) == _results(serial.run())
        peaks = [r["peak_rss_mb"] for r in pooled.rows()]
        assert all(50 < p < 4000 for p in peaks), peaks  # a Python process with NumPy and SymPy loaded
        assert [r["peak_rss_mb"] for r in serial.rows()] == [None] * 3  # shared with the sweep: not claimed
        assert table[0]["peak_rss_mb_max"] == max(peaks) and table[0]["wall_seconds_max"] > 0
        md = (tmp_path / "pooled" / "sweep_table.md").read_text()
        assert f"| {max(peaks):.0f} |" in md and "peak MB (max)" in md
    finally:
        pooled.close()
        serial.close()

