"""Search throughput: the same campaigns with two code paths, side by side in one run.

`--compare engine` (default): the legacy and the fast engine; `--compare fitter`: the fast engine with the trf
and the batched fitter (FitOptions.fitter); `--compare minpack`: the fast engine with the trf and the lm
fitter (MINPACK); `--compare starts`: the fast engine with its starts' Sobol draw built afresh
for every group fit ("drawn", the earlier code) and shared between them ("cached"). The legacy variant
of `--compare engine` draws its starts per group too, so it stays the code path the fast engine is measured
against. Per task, one campaign per variant (same seed, same generation
budget, no clock stop, the local pool of `--workers` processes), each in its own process, the two taking
turns on who goes first. Reported
per task and engine: candidates evaluated, search seconds (wall, proposing to the last write), candidates
per second per core (evaluated / search seconds / workers), search CPU seconds (campaign process and its
workers, proposing to the last write; the final report is excluded) and candidates per CPU second; then
the fast/legacy ratios, and whether the best law, its constants and its validation score are the same.
CPU seconds are the steadier measure on a shared machine (other load inflates wall time, not CPU time).

    KEPLER_DATA_DIR=/work/shared/datasets python benchmarks/search_throughput.py [task ...] \
        [--generations 60] [--seed 0] [--workers 2] [--compare engine|fitter|minpack|starts] [--json out.json] \
        [--markdown out.md]
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as the campaign's pool workers
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TASKS = ["vocab_scaling_law", "data_constrained_scaling_law", "lr_bsz_scaling_law", "sft_scaling_law"]
ENGINES = ("legacy", "fast")
VARIANTS = {"engine": ENGINES, "fitter": ("trf", "batched"), "minpack": ("trf", "lm"),
            "starts": ("drawn", "cached")}  # baseline first
FITTERS = ("trf", "lm", "batched")
UNCACHED_STARTS = ("legacy", "drawn")


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def one(task: str, engine: str, out: Path, generations: int, seed: int, workers: int) -> dict:
    """Run one campaign in this process; CPU of the search = this process + its (reaped) pool workers.
    `engine` is an engine name, a fitter name (trf, batched: the fast engine with that fitter) or a way to draw
    the starts (drawn, cached: the fast engine)."""
    from discovery.laws import fit
    from discovery.search.campaign import Campaign, CampaignSettings

    if engine in UNCACHED_STARTS:  # forked pool workers inherit this
        fit._unit_starts = fit._unit_starts.__wrapped__
    path = ({"fitter": engine} if engine in FITTERS else
            {"engine": engine} if engine in ENGINES else {})
    settings = CampaignSettings(task=task, seed=seed, generations=generations, executor="local",
                                workers=workers, time_limit=None, out=str(out), **path)
    campaign = Campaign(settings)
    marks = {}
    finish = campaign.finish

    def timed_finish(stop_reason: str) -> dict:  # run() has closed (and reaped) the pool before it finishes
        marks["search_cpu"] = _cpu() - marks["start"]
        return finish(stop_reason)

    campaign.finish = timed_finish
    marks["start"] = _cpu()
    result = campaign.run()
    campaign.close()
    best = result["best"]
    return {"task": task, "engine": engine, "evaluated": result["candidates_evaluated"],
            "search_seconds": result["wall_seconds"], "search_cpu": round(marks["search_cpu"], 2),
            "stop_reason": result["stop_reason"], "clock": result.get("clock"),
            "generations": result["generations_completed"], "best_formula": best["formula"],
            "best_constants": best["constants"], "best_val_r2": best["validation"]["r2"]}


def run_one_in_subprocess(task: str, engine: str, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--one", task, engine, str(out), "--generations", str(args.generations),
           "--seed", str(args.seed), "--workers", str(args.workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{task} {engine} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["process_seconds"] = round(time.perf_counter() - t0, 1)
    row["rate_per_core"] = row["evaluated"] / max(row["search_seconds"], 1e-9) / args.workers
    row["per_cpu_second"] = row["evaluated"] / max(row["search_cpu"], 1e-9)
    return row


def compare(rows: list[dict], variants: tuple[str, str] = ENGINES) -> list[dict]:
    """Per task, the second variant against the first (named legacy and fast below, whatever they are)."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        legacy = next(r for r in rows if r["task"] == task and r["engine"] == variants[0])
        fast = next(r for r in rows if r["task"] == task and r["engine"] == variants[1])
        out.append({"task": task,
                    "ratio_rate_per_core": fast["rate_per_core"] / legacy["rate_per_core"],
                    "ratio_per_cpu_second": fast["per_cpu_second"] / legacy["per_cpu_second"],
                    "same_best_formula": fast["best_formula"] == legacy["best_formula"],
                    "same_best_constants": fast["best_constants"] == legacy["best_constants"],
                    "val_r2_legacy": legacy["best_val_r2"], "val_r2_fast": fast["best_val_r2"],
                    "val_r2_diff": fast["best_val_r2"] - legacy["best_val_r2"],
                    "same_evaluated": fast["evaluated"] == legacy["evaluated"]})
    return out


def markdown(rows: list[dict], comparison: list[dict], args, variants: tuple[str, str] = ENGINES) -> str:
    lines = [f"Seed {args.seed}, {args.generations} generations, local pool of {args.workers} workers, "
             "no time limit.", "",
             f"| task | {args.compare} | evaluated | search s | cand/s/core | search CPU s | cand/CPU s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['engine']} | {r['evaluated']} | {r['search_seconds']:.1f} | "
                     f"{r['rate_per_core']:.2f} | {r['search_cpu']:.1f} | {r['per_cpu_second']:.2f} |")
    lines += ["", "| task | ratio cand/s/core | ratio cand/CPU s | same best law | same constants | "
              f"val R² {variants[0]} | val R² {variants[1]} | same candidates evaluated |",
              "|---|---|---|---|---|---|---|---|"]
    for c in comparison:
        lines.append(f"| {c['task']} | {c['ratio_rate_per_core']:.2f}x | {c['ratio_per_cpu_second']:.2f}x | "
                     f"{'yes' if c['same_best_formula'] else 'NO'} | {'yes' if c['same_best_constants'] else 'no'} | "
                     f"{c['val_r2_legacy']:.10f} | {c['val_r2_fast']:.10f} | "
                     f"{'yes' if c['same_evaluated'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="*")
    ap.add_argument("--generations", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compare", choices=sorted(VARIANTS), default="engine",
                    help="engine: legacy vs fast engine; fitter: trf vs batched fitter (fast engine); "
                         "starts: starts drawn per group fit vs cached (fast engine)")
    ap.add_argument("--out", help="where the runs go (default: a temporary directory)")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--one", nargs=3, metavar=("TASK", "ENGINE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        task, engine, out = args.one
        print(json.dumps(one(task, engine, Path(out), args.generations, args.seed, args.workers)))
        return
    base = Path(args.out or tempfile.mkdtemp(prefix="kepler-throughput-"))
    variants = VARIANTS[args.compare]
    rows = run_all(args.tasks or TASKS, variants, base, args)
    comparison = compare(rows, variants)
    text = markdown(rows, comparison, args, variants)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "comparison": comparison}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


def run_all(tasks: list[str], variants: tuple[str, str], base: Path, args) -> list[dict]:
    """Both variants' campaigns on every task, each in its own process, taking turns going first."""
    rows = []
    for i, task in enumerate(tasks):
        for engine in (variants if i % 2 == 0 else variants[::-1]):
            row = run_one_in_subprocess(task, engine, base / f"{task}-{engine}", args)
            rows.append(row)
            print(f"{task:32s} {engine:6s} evaluated {row['evaluated']:4d}  search {row['search_seconds']:7.1f} s  "
                  f"{row['rate_per_core']:6.2f} cand/s/core  CPU {row['search_cpu']:7.1f} s  "
                  f"{row['per_cpu_second']:6.2f} cand/CPU s  best val R2 {row['best_val_r2']:.10f}", flush=True)
    rows.sort(key=lambda r: (r["task"], r["engine"] != variants[0]))
    return rows


if __name__ == "__main__":
    main()
