"""Peak memory and time of `kepler fit` on a large CSV, against a baseline checkout, run in turns.

A user task is written to a temporary folder (KEPLER_TASKS_DIR + KEPLER_DATA_DIR): ROWS rows of a
planted Chinchilla-type law, L = E + A/N**alpha + B/D**beta with 1% noise, its test split the
largest-compute tenth. `kepler fit` then fits the law (the task's human law, so with its inits and
bounds) with the default 128 starts, once with this checkout and once with the baseline (a git ref,
extracted with `git archive`), in turns. Reported per run: peak RSS of the `kepler fit` process
(ru_maxrss), wall seconds, and the fitted constants and scores, which must agree.

    python benchmarks/fit_memory.py [--rows 1000000] [--starts 128] [--baseline main] [--repeat 1]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TASK = "planted_chinchilla"
FORMULA = "E + A/N**alpha + B/D**beta"
TRUTH = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}

TOML = f'''
name = "{TASK}"
title = "Planted Chinchilla law (benchmark)"
paper = "benchmarks/fit_memory.py"
targets = ["loss"]
constant_limit = 5
converter = "tidy_csv"
citation = "@misc{{planted, title={{planted}}}}"

[[variables]]
column = "N"
symbol = "N"

[[variables]]
column = "D"
symbol = "D"

[split]
rule = "test: the largest-compute tenth"
validation_axis = "C"

[[sources]]
file = "data.csv"
url = "https://example.org/data.csv"
sha256 = "@SHA256@"
format = "csv"

[[human_laws]]
name = "planted"
formula = "{FORMULA}"
source = "planted"
constants.E = {{ init = 1.0, bounds = [0.0, 10.0] }}
constants.A = {{ init = 100.0, bounds = [0.0, 1e5] }}
constants.alpha = {{ init = 0.3, bounds = [0.0, 2.0] }}
constants.B = {{ init = 100.0, bounds = [0.0, 1e5] }}
constants.beta = {{ init = 0.3, bounds = [0.0, 2.0] }}
'''


def make_task(root: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), rows))
    d = np.exp(rng.uniform(np.log(1e9), np.log(1e12), rows))
    t = TRUTH
    loss = (t["E"] + t["A"] / n ** t["alpha"] + t["B"] / d ** t["beta"]) * (1 + 0.01 * rng.standard_normal(rows))
    c = 6 * n * d
    split = np.where(c >= np.quantile(c, 0.9), "test", "train")
    data = root / "data" / TASK
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "data.csv", "w") as fh:
        fh.write("N,D,C,loss,split\n")
        for i in range(rows):
            fh.write(f"{float(n[i])!r},{float(d[i])!r},{float(c[i])!r},{float(loss[i])!r},{split[i]}\n")
    digest = hashlib.sha256((data / "data.csv").read_bytes()).hexdigest()  # Kepler checks it, as for any task
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "tasks" / f"{TASK}.toml").write_text(TOML.replace("@SHA256@", digest))


def extract(ref: str, into: Path) -> Path:
    archive = into / "baseline.tar"
    with open(archive, "wb") as fh:
        subprocess.run(["git", "archive", ref], cwd=REPO, stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "baseline", filter="data")
    return into / "baseline"


def run_fit(code: Path, root: Path, starts: int) -> dict:
    """One `kepler fit` process: its peak RSS (from wait4, this process alone and what it waited for)."""
    env = {**os.environ, "KEPLER_TASKS_DIR": str(root / "tasks"), "KEPLER_DATA_DIR": str(root / "data"),
           "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "discovery", "fit", TASK, FORMULA, "--json", "--starts", str(starts)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"kepler fit failed ({code}):\n{err.read()[-2000:]}")
        result = json.loads(out.read())
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": wall, "result": result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--starts", type=int, default=128)
    ap.add_argument("--baseline", default="main", help="git ref of the baseline, or 'none'")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kepler-fit-memory-") as tmp:
        root = Path(tmp)
        make_task(root, args.rows)
        codes = {"this checkout": REPO}
        if args.baseline != "none":
            codes = {f"baseline ({args.baseline})": extract(args.baseline, root), **codes}
        runs: dict[str, list[dict]] = {name: [] for name in codes}
        for _ in range(args.repeat):
            for name, code in codes.items():  # in turns, so both see the same machine load
                runs[name].append(run_fit(code, root, args.starts))
                r = runs[name][-1]
                print(f"{name}: peak RSS {r['peak_rss_mb']:.0f} MB, {r['wall_s']:.1f} s", flush=True)
    print(f"\nkepler fit {TASK} ({args.rows} rows, {args.starts} starts): peak RSS of the fit process and wall time")
    print("| code | peak RSS (MB) | wall (s) | test R² | validation R² | constants (all of train) |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        best = min(rs, key=lambda r: r["wall_s"])
        res = best["result"]
        consts = ", ".join(f"{k}={v:.6g}" for k, v in next(iter(res["constants"].values())).items())
        print(f"| {name} | {max(r['peak_rss_mb'] for r in rs):.0f} | {best['wall_s']:.1f} | {res['test']['r2']:.6f} "
              f"| {res['validation']['r2']:.6f} | {consts} |")


if __name__ == "__main__":
    main()
