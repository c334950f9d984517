"""A hard bound on the work of parsing and compiling one untrusted formula.

Some short formulas send SymPy into exponential work (nested log10 or sigmoid, abs or Max over deep
nests: rewriting, assumptions, derivatives), and that work cannot be interrupted in a thread, nor in
C-level arithmetic. So untrusted text (LLM replies, `kepler fit`, task files' human laws, law.json)
is first parsed and compiled in a helper process, in a worker it forks per formula and kills when it
has used `time_limit()` seconds of CPU; the formula is then refused with that reason (and the helper stays
warm: a timeout costs no restart). CPU, not wall, time: a law's verdict must not depend on what else the
machine runs (a human law that needs 0.3 CPU seconds took over 5 wall seconds in a niced process on a
loaded machine, and was refused). A worker still running after WALL_FACTOR times the bound in wall time
is stopped anyway, so no parse can hang; where CPU time cannot be read (no /proc), the bound is wall time.
Only a formula that was processed in time is parsed in the caller's process. The offline grammar's own
laws are small and regular: those that are plainly light (`is_light`) are parsed in process, the rest go
through the helper too. Verdicts are remembered for the life of the process, so a law is checked once
however often it is re-read.
"""
from __future__ import annotations

import ast
import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Sequence

from discovery.laws.deadline import WALL_FACTOR
from discovery.laws.law import Law, LawError, parse_law, syntax_tree

DEFAULT_TIME_LIMIT = 5.0  # CPU seconds to parse and compile one formula; KEPLER_FORMULA_TIME_LIMIT overrides (0: off)
STARTUP_TIMEOUT = 120.0  # seconds for the helper to import SymPy (not counted against any formula)
HELPER_MARGIN = 10.0  # seconds past the worker's wall bound before the helper itself is taken to be stuck
POLL = 0.02  # seconds between looks at the worker's CPU time
# A light formula (the offline grammar's laws are) has at most this many syntax nodes,
LIGHT_NODES = 150
LIGHT_NESTING = 3  # functions (and powers with a non-literal exponent) nested at most this deep,
LIGHT_BRANCHING = 0  # and no Min/Max/abs (their derivatives and assumptions are the costly ones; the grammar has none)
BRANCHING = {"Min", "Max", "min", "max", "abs"}
_MEMORY = 4096  # verdicts remembered


class FormulaTimeout(LawError):
    """Parsing and compiling the formula took longer than the bound; the message says so in one line."""


def time_limit() -> float:
    raw = os.environ.get("KEPLER_FORMULA_TIME_LIMIT")
    try:
        return DEFAULT_TIME_LIMIT if raw is None or not raw.strip() else float(raw)
    except ValueError:
        raise ValueError(f"KEPLER_FORMULA_TIME_LIMIT must be a number of seconds, not {raw!r}") from None


def timeout_reason(limit: float) -> str:
    return (f"formula took longer than {limit:g}s (CPU) to parse and compile (too deeply nested or too large for "
            f"SymPy); write it with fewer nested functions")


def _nesting(node: ast.AST) -> int:
    inner = max((_nesting(c) for c in ast.iter_child_nodes(node)), default=0)
    literal = (ast.Constant, ast.UnaryOp)
    nests = isinstance(node, ast.Call) or (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)
                                          and not isinstance(node.right, literal))
    return inner + nests


def is_light(tree: ast.Expression) -> bool:
    """True for formulas small and shallow enough that SymPy's cost is bounded by their shape."""
    nodes = list(ast.walk(tree))
    if len(nodes) > LIGHT_NODES:
        return False
    branching = sum(1 for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                    and n.func.id in BRANCHING)
    return branching <= LIGHT_BRANCHING and _nesting(tree) <= LIGHT_NESTING


def parse_bounded(text: str, variables: Sequence[str], *, constants: Iterable[str] | None = None,
                  max_constants: int | None = None, column_hints: dict[str, str] | None = None,
                  check_typos: bool = True, light_in_process: bool = False,
                  parse: Callable[..., Law] = parse_law) -> Law:
    """`parse_law` for untrusted text, within a hard time bound: the formula is parsed and compiled in the
    helper process first, and refused (FormulaTimeout) if that overruns the bound. `light_in_process`: a
    formula that `is_light` skips the helper (the offline grammar's own laws: the normal path of a
    campaign). `parse`: what parses it here once it passed (parse_law, or the campaign's cached parse).

    The helper parses the formula with every other name a constant, no constant limit and no typo check:
    the most work any declaration can ask for (declared constants, limits and typo checks only refuse,
    sooner). So its verdict holds for every declaration, and the parse here, with the real ones, finishes
    within the bound too."""
    limit = time_limit()
    if limit > 0 and isinstance(text, str):
        tree = syntax_tree(text)  # length, characters and syntax: cheap refusals come first, in process
        if not (light_in_process and is_light(tree)):
            _check({"text": text, "variables": list(variables),
                    "column_hints": dict(sorted((column_hints or {}).items()))}, limit)
    return parse(text, variables, constants=constants, max_constants=max_constants, column_hints=column_hints,
                 check_typos=check_typos)


def bounded(parse: Callable[..., Law], light_in_process: bool = True) -> Callable[..., Law]:
    """`parse` (parse_law's signature) within the time bound, as parse_bounded does it."""
    return partial(parse_bounded, parse=parse, light_in_process=light_in_process)


LIGHT_IN_PROCESS = bounded(parse_law)  # the offline grammar's default parse


# ---- verdicts ------------------------------------------------------------------------------------------
_VERDICTS: OrderedDict[str, str | None] = OrderedDict()  # request -> None (in time) or the timeout's reason
_VERDICTS_LOCK = threading.Lock()
_UNKNOWN = object()


def _check(request: dict, limit: float) -> None:
    key = json.dumps(request, sort_keys=True)
    with _VERDICTS_LOCK:
        verdict = _VERDICTS.get(key, _UNKNOWN)
        if verdict is not _UNKNOWN:
            _VERDICTS.move_to_end(key)
    if verdict is _UNKNOWN:
        verdict = _helper().ask(request, limit)
        with _VERDICTS_LOCK:
            _VERDICTS[key] = verdict
            while len(_VERDICTS) > _MEMORY:
                _VERDICTS.popitem(last=False)
    if verdict is not None:
        raise FormulaTimeout(verdict)


# ---- the helper process --------------------------------------------------------------------------------
class _Helper:
    """One helper process (python -m discovery.laws.guard) answering one request at a time."""

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked child gets its own helper, never this one's pipes
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def _start(self):
        # Forked when this process runs no other thread (a command line): the child has SymPy imported already.
        # Otherwise a fresh interpreter (forking a threaded process can leave a lock held in the child).
        proc = _Forked() if hasattr(os, "fork") and threading.active_count() == 1 else _spawn()
        try:
            line = self._read(proc, STARTUP_TIMEOUT)
        except BaseException:
            _stop(proc)
            raise
        if line != {"ready": True}:
            _stop(proc)
            raise RuntimeError("the formula helper process did not start")
        return proc

    @staticmethod
    def _read(proc, timeout: float) -> dict | None:
        """One reply line, or None if none came within `timeout` seconds (or the helper died)."""
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            if ready:
                line = proc.stdout.readline()
                return json.loads(line) if line else None

    def ask(self, request: dict, limit: float) -> str | None:
        """None when the helper parsed (and compiled, or refused) the formula within `limit` seconds, else the
        reason it is refused."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            proc = self.proc
            assert proc.stdin is not None
            try:
                proc.stdin.write((json.dumps({"formula": request, "limit": limit}) + "\n").encode())
                proc.stdin.flush()
                # the helper answers by the limit itself (it kills the worker that overran); waiting longer than
                # that means the helper is stuck or gone: it is then stopped, and the next formula gets a new one
                answer = self._read(proc, WALL_FACTOR * limit + HELPER_MARGIN)
            except BaseException:  # Ctrl-C while waiting, a broken pipe: the helper's state is unknown
                self.stop()
                raise
            if answer is None:
                self.stop()
            if answer is None or answer.get("timeout"):
                return timeout_reason(limit)
            return None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


def _spawn() -> subprocess.Popen:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen([sys.executable, "-m", "discovery.laws.guard", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, cwd=root)


class _Forked:
    """The helper as a fork of this (single-threaded) process, with the part of Popen's interface used here."""

    def __init__(self) -> None:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the helper: serve, then leave without running the parent's exit handlers
            code = 0
            try:
                os.close(from_parent)
                os.close(to_parent)
                serve(parent, os.fdopen(to_child, "r", encoding="utf-8"), os.fdopen(from_child, "w", encoding="utf-8"))
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(to_child)
        os.close(from_child)
        self.pid = pid
        self.stdin = os.fdopen(from_parent, "wb")
        self.stdout = os.fdopen(to_parent, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        end = time.monotonic() + (timeout or 0)
        while self.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        return self.returncode


def _stop(proc) -> None:
    proc.terminate()  # the helper kills the worker it runs, then exits
    try:
        proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        pass
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


_HELPER: _Helper | None = None
_HELPER_LOCK = threading.Lock()


def _helper() -> _Helper:
    global _HELPER
    with _HELPER_LOCK:
        if _HELPER is None or _HELPER.pid != os.getpid():
            _HELPER = _Helper()
        return _HELPER


def prestart() -> None:
    """Start the helper in the background now (importing SymPy takes it a second or more), so the first
    formula that needs it waits less; a command that will parse untrusted text calls this first."""
    def start() -> None:
        helper = _helper()
        with helper.lock:
            if helper.proc is None or helper.proc.poll() is not None:
                try:
                    helper.proc = helper._start()
                except Exception:  # noqa: BLE001 - started again on first use, where an error shows
                    helper.proc = None

    if time_limit() <= 0:
        return
    if hasattr(os, "fork") and threading.active_count() == 1:
        start()  # a fork: at once, and only while no other thread exists
    else:
        threading.Thread(target=start, daemon=True, name="kepler-formula-helper").start()


@atexit.register
def stop_helper() -> None:
    """Stop this process's helper (and the worker it runs, if any)."""
    if _HELPER is not None and _HELPER.pid == os.getpid():
        _HELPER.stop()


# ---- inside the helper -----------------------------------------------------------------------------------
WARM_UP = "E + A/N**a + B*exp(-b*D) + C*log(D)*tanh(N)"  # imports and fills SymPy's caches before the first formula


def _watch_parent(parent: int) -> None:
    def loop() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=loop, daemon=True).start()


def _work(request: dict) -> dict:
    try:
        parse_law(request["text"], request["variables"], column_hints=request["column_hints"],
                  check_typos=False).compile()
        return {"ok": True}
    except LawError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - compiling failed: the formula is refused with the reason
        return {"error": " ".join(f"the formula cannot be compiled: {type(exc).__name__}: {exc}".split())[:300]}


_WORKER: list[int] = []  # the worker running now, for a helper told to stop


def _stop_serving(signum, frame) -> None:
    for pid in _WORKER:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(0)


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) process `pid` has used so far, from Linux's /proc; None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _answer_within(fh, pid: int, limit: float) -> dict | None:
    """The worker's answer, or None once it has used `limit` CPU seconds (wall seconds where CPU time cannot be
    read) or run WALL_FACTOR x `limit` wall seconds."""
    start = time.monotonic()
    while True:
        ready, _, _ = select.select([fh], [], [], POLL)
        if ready:  # an answer that came is taken, even one that came as the bound was reached
            return json.loads(fh.read() or "null")
        waited = time.monotonic() - start
        used = cpu_seconds(pid)
        if (waited if used is None else used) >= limit or waited >= WALL_FACTOR * limit:
            return None


def _in_worker(request: dict, limit: float) -> dict | None:
    """Do one request in a forked worker, killed when it overruns `limit`: the answer, or None (overran)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            os.close(read_end)
            _watch_parent(os.getppid())  # a worker never outlives its helper
            with os.fdopen(write_end, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(_work(request)))
        finally:
            os._exit(0)
    _WORKER[:] = [pid]
    os.close(write_end)
    with os.fdopen(read_end, "r", encoding="utf-8") as fh:
        answer = _answer_within(fh, pid, limit)
    if answer is None:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    _WORKER.clear()
    return answer


def serve(parent: int, requests=None, out=None) -> None:
    """Answer requests (stdin), one JSON line each: {"ok": true} or {"error": "<why it was refused>"} once the
    formula is parsed and compiled (or refused), or {"timeout": true}. Each formula is worked on in a fork of
    this process, killed when it overruns the request's limit: the helper itself never hangs, and stays warm."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to answer; it stops this process
    signal.signal(signal.SIGTERM, _stop_serving)
    requests = requests or sys.stdin
    out = out or sys.stdout
    _work({"text": WARM_UP, "variables": ["N", "D"], "column_hints": {}})
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    while True:
        ready, _, _ = select.select([requests], [], [], 0.5)
        if os.getppid() != parent:
            return
        if not ready:
            continue
        line = requests.readline()
        if not line:
            return
        request = json.loads(line)
        answer = _in_worker(request["formula"], float(request["limit"]))
        out.write(json.dumps(answer if answer is not None else {"timeout": True}) + "\n")
        out.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid())
