"""Ctrl-C is answered within 2 s in every phase of `kepler discover` and `kepler sweep` (issue 14, items 2 and 15).

Real `kepler` processes are started and sent SIGINT while LLM calls are in flight, while the formula
helper is busy, while the local pool fits, and while a sweep's pool runs campaigns. Each must exit
with its "stopped" message and leave no process behind (pool workers, helpers). The processes run
side by side, so the test waits about as long as the slowest of them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.llm_server import ScriptedLLMServer, slow
from tests.test_hardening_parse import TOO_SLOW

REPO = Path(__file__).resolve().parent.parent
ANSWER_S = 2.0


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _as_in_a_terminal() -> None:
    """Ctrl-C reaches `kepler` as it does in a terminal, however the tests were started: a shell's background job
    (`make test &`) ignores SIGINT, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Kepler:
    def __init__(self, name: str, args: list[str], tmp: Path, env: dict):
        self.name = name
        self.out = open(tmp / f"{name}.out", "w+")
        self.err = open(tmp / f"{name}.err", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "discovery", *args], cwd=tmp, env=env,
                                     stdout=self.out, stderr=self.err, preexec_fn=_as_in_a_terminal)

    def interrupt(self) -> tuple[float, set[int]]:
        family = _descendants(self.proc.pid)
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        seconds = time.monotonic() - t0
        end = time.monotonic() + 1.0
        while time.monotonic() < end and any(_alive(p) for p in family):
            time.sleep(0.05)
        left = {p for p in family if _alive(p)}
        for p in left:
            os.kill(p, signal.SIGKILL)
        return seconds, left

    def output(self) -> tuple[str, str]:
        self.out.seek(0)
        self.err.seek(0)
        return self.out.read(), self.err.read()


def _wait(run: Kepler, condition, seconds: float = 120.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end or run.proc.poll() is not None:
            run.proc.kill()
            raise AssertionError(f"{run.name} did not reach its phase: {run.output()[1][-2000:]}")
        time.sleep(0.05)


@pytest.mark.timeout(400)
def test_ctrl_c_is_answered_within_two_seconds_in_every_phase(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "KEPLER_FORMULA_TIME_LIMIT": "60"}
    hostile = json.dumps({"candidates": [{"formula": TOO_SLOW}]})
    (tmp_path / "slow_fits.toml").write_text('task = "sft_scaling_law"\nfit_starts = 2048\nexecutor = "local"\n'
                                             'workers = 2\ngenerations = 50\n')
    llm = ["--proposer", "llm", "--model", "m", "--executor", "local", "--workers", "2", "--generations", "50",
           "--islands", "2", "--children", "2", "--structured", "off"]  # off: no one-at-a-time first probe
    results = {}
    with ScriptedLLMServer(default=slow(60.0)) as calls, ScriptedLLMServer(default=slow(0.0, hostile)) as parser:
        # first wave: three campaigns side by side, each interrupted in its phase
        runs = {
            "llm-in-flight": Kepler("llm", ["discover", "chinchilla_approach3", *llm, "--base-url", calls.base_url,
                                            "--out", str(tmp_path / "llm"), "--llm-cache-dir", str(tmp_path / "c1")],
                                    tmp_path, env),
            "helper-parsing": Kepler("parse", ["discover", "chinchilla_approach3", *llm, "--base-url", parser.base_url,
                                               "--out", str(tmp_path / "parse"), "--llm-cache-dir",
                                               str(tmp_path / "c2")], tmp_path, env),
            "pool-fitting": Kepler("fit", ["discover", "--config", str(tmp_path / "slow_fits.toml"),
                                           "--out", str(tmp_path / "fit")], tmp_path, env),
        }
        phases = {
            "llm-in-flight": lambda: len(calls.requests) >= 2,  # both islands' calls are waiting on the server
            "helper-parsing": lambda: len(parser.requests) >= 1,  # then the helper works on TOO_SLOW for a minute
            "pool-fitting": lambda: "run directory" in runs["pool-fitting"].output()[0],
        }
        for name, reached in phases.items():
            _wait(runs[name], reached)
            time.sleep(2.0 if name != "llm-in-flight" else 0.5)  # well inside the phase
            results[name] = (*runs[name].interrupt(), *runs[name].output(), runs[name].proc.returncode)
    # then a sweep, alone: its local pool runs two campaigns when it is interrupted
    sweep = Kepler("sweep", ["sweep", "--tasks", "sft_scaling_law,parallel_scaling_law", "--seeds", "0-1",
                             "--workers", "2", "--generations", "50", "--fit-starts", "2048",
                             "--out", str(tmp_path / "sweep")], tmp_path, env)
    _wait(sweep, lambda: len(list((tmp_path / "sweep").glob("*/*/campaign.sqlite"))) >= 2)
    time.sleep(1.0)
    results["sweep-pool"] = (*sweep.interrupt(), *sweep.output(), sweep.proc.returncode)
    for name, (seconds, left, out, err, code) in results.items():
        assert code == 130, (name, code, err[-2000:])
        assert "stopped" in out and "Traceback" not in err and "AttributeError" not in err, (name, err[-2000:])
        assert seconds < ANSWER_S, (name, seconds)
        assert not left, (name, left)
    assert "kepler sweep --resume" in results["sweep-pool"][2]
    assert "kepler discover --resume" in results["pool-fitting"][2]
