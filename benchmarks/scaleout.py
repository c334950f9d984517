"""Scale-out benchmark: the same offline sweep on one process and on a Dask LocalCluster.

1. Sweep: the 8 SLDBench tasks x 2 seeds, short budget, run by `Sweep` with `--executor local
   --workers 1` (one process, campaigns one after another) and with `--executor dask --workers 2`
   (a LocalCluster of 2 single-threaded worker processes, one campaign per worker at a time).
   Reported: wall time of each, speed-up, and whether every run's candidates table (formula, status,
   fitted constants, validation scores) and best law (formula, constants, test scores) are identical.
2. Per-candidate overhead of the dask path inside one campaign: the fit jobs a campaign made for
   tasks of >= 500 train rows (vocab 1080, lr_bsz 2702, sft 504), taken from the runs of (1), are run
   through `DaskExecutor` with 1 worker beside the serial executor, and with 2 workers beside Kepler's
   local pool of 2 (data scattered once; workers warmed up first; cluster start and scatter reported
   apart as one-off costs per campaign). Each pair is timed in turns, baseline and dask alternately,
   `--repeats` times, and the fastest of each side is kept.
   Dask vs the local pool = (wall_dask2 - wall_pool2) / wall_pool2, the same jobs, generation by generation,
   on Kepler's own process pool of 2: what the Dask path costs beyond the same parallelism on one machine.
   overhead at 2 workers, end to end = (2 x wall_dask2 - wall_serial) / wall_serial: the worker-seconds
   spent per candidate beyond a serial fit (dispatch, transfer, idle workers at the end of a generation,
   and any CPU the machine's other load takes). Dispatch only: the same with each side's own fit time
   (measured inside the fit, on the worker) taken out. CPU: (CPU seconds of client, scheduler, nannies
   and workers on the dask path - CPU seconds of the serial path) / serial CPU seconds, per candidate:
   what the dask path costs beyond the fits themselves, unmoved by other load on the machine.

    KEPLER_DATA_DIR=/work/shared/datasets python benchmarks/scaleout.py [--generations 3] [--json out.json]
    ... --skip-sweep --out DIR --overhead-from RUNS   # the overhead part only, on the fit jobs of finished runs
"""
from __future__ import annotations

import os

# Dask's nannies start workers with one BLAS thread; give this process (the one-process sweep and the
# serial fits) the same, before NumPy loads. On a busy 2-core machine multi-threaded OpenBLAS makes these
# small fits many times slower, which would be measured here as a "speed-up" of the dask path.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sqlite3  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SLDBENCH = ["parallel_scaling_law", "vocab_scaling_law", "sft_scaling_law", "domain_mixture_scaling_law",
            "moe_scaling_law", "data_constrained_scaling_law", "lr_bsz_scaling_law", "easy_question_scaling_law"]
OVERHEAD_TASKS = ["vocab_scaling_law", "lr_bsz_scaling_law", "sft_scaling_law"]


def candidates(run_dir: Path) -> list[tuple]:
    from discovery.search.store import Store

    store = Store(run_dir / "campaign.sqlite")
    try:
        return store.outcomes()
    finally:
        store.close()


def best(run_dir: Path) -> dict:
    b = json.loads((run_dir / "best.json").read_text()).get("best") or {}
    return {k: b.get(k) for k in ("formula", "constants", "validation", "test")}


def run_sweep(out: Path, args, executor: str, workers: int) -> tuple[float, object]:
    from discovery.search.sweep import Sweep, make_sweep_settings

    settings = make_sweep_settings(tasks=",".join(args.tasks), seeds=args.seeds, proposers=["offline"],
                                   executor=executor, workers=workers, generations=args.generations,
                                   population=args.population, islands=args.islands, children=args.children,
                                   fit_starts=args.fit_starts)
    sweep = Sweep.create(settings, out)
    t0 = time.perf_counter()
    table = sweep.run()
    wall = time.perf_counter() - t0
    rows = sweep.rows()
    sweep.close()
    failed = [dict(r) for r in rows if r["status"] != "finished"]
    if failed:
        raise SystemExit(f"runs failed in {out}: {failed}")
    return wall, table


def compare_sweeps(a: Path, b: Path) -> tuple[bool, list[str]]:
    diffs = []
    for db in sorted(a.rglob("campaign.sqlite")):
        run = db.parent.relative_to(a)
        if candidates(a / run) != candidates(b / run):
            diffs.append(f"{run}: candidates differ")
        if best(a / run) != best(b / run):
            diffs.append(f"{run}: best law differs")
    return not diffs, diffs


def fit_jobs(run_dir: Path):
    """The FitJobs a campaign sent to its executor, rebuilt from its store (evaluated and failed candidates)."""
    from discovery.search.campaign import Campaign
    from discovery.search.executors import FitJob, stored_specs

    campaign = Campaign.resume(run_dir)
    try:
        rows = [r for r in campaign.store.candidates() if r["status"] in ("evaluated", "failed")]
        generations: dict[int, list] = {}
        for r in rows:
            generations.setdefault(r["generation"], []).append(
                FitJob(r["formula"], stored_specs(r["constant_specs"]), campaign.fit_opts,
                       campaign.settings.fit_time_limit, tuple(campaign.settings.fit_recipes)))
        return campaign._fit_data, [generations[g] for g in sorted(generations)]
    finally:
        campaign.close()


def cpu_seconds() -> float:
    """CPU time of this process (client and, for a LocalCluster, the scheduler) and of all its children
    (nannies and workers): what the work cost, however busy the machine is with other things."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def timed_map(executor, generations) -> tuple[float, list, float]:
    """One map per generation, as the campaign does it: wall seconds, outcomes, CPU seconds."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = [o for jobs in generations for o in executor.map(jobs)]
    return time.perf_counter() - t0, out, cpu_seconds() - c0


def side_by_side(baseline, dask, generations, repeats: int) -> tuple[tuple, tuple]:
    """Best (wall, outcomes, CPU) of each executor over `repeats` timings, taken in turns (baseline, dask,
    dask, baseline, ...) so that a change in the machine's load falls on both sides alike."""
    executors = {"baseline": baseline, "dask": dask}
    timings: dict[str, list] = {name: [] for name in executors}
    for r in range(repeats):
        for name in ("baseline", "dask") if r % 2 == 0 else ("dask", "baseline"):
            timings[name].append(timed_map(executors[name], generations))
    return tuple(min(timings[name], key=lambda t: t[0]) for name in executors)


def overhead(run_dir: Path, repeats: int, generations: int | None = None) -> dict:
    """Dask with 1 worker against the serial executor, and with 2 workers against the local pool of 2."""
    from discovery.search.executors import DaskExecutor, LocalPoolExecutor, SerialExecutor

    data, jobs = fit_jobs(run_dir)
    jobs = jobs[:generations]
    n = sum(map(len, jobs))
    row = {"task": data_task(run_dir), "train_rows": len(data.fit_part) + len(data.validation), "candidates": n,
           "generations": len(jobs), "repeats": repeats}
    ref = None
    for workers in (1, 2):
        # the same parallelism without Dask: in this process (1), or Kepler's own process pool (2, the default
        # `--executor local` on this machine)
        baseline = SerialExecutor(data) if workers == 1 else LocalPoolExecutor(data, workers=2)
        t0 = time.perf_counter()
        ex = DaskExecutor(data, workers=workers)
        started = time.perf_counter() - t0
        try:
            list(baseline.map(jobs[0][: 2 * workers]))  # warm-up: imports, caches
            t0 = time.perf_counter()
            list(ex.map(jobs[0][: 2 * workers]))  # warm-up: every worker imports the fitter once
            warm = time.perf_counter() - t0
            (t_base, base_out, cpu_base), (t, out, cpu) = side_by_side(baseline, ex, jobs, repeats)
        finally:
            ex.close()
            baseline.close()
        if workers == 1:
            t_serial, ref, cpu_serial = t_base, base_out, cpu_base
            outside_serial = t_serial - sum(o.seconds for o in ref)  # parsing and scoring around the fits
            row.update(serial_s=t_serial, serial_cpu_s=cpu_serial, serial_ms_per_candidate=1000 * t_serial / n)
        else:
            row["pool2_s"] = t_base
            row["pool2_identical"] = [(o.constants, o.val_r2) for o in base_out] == \
                [(o.constants, o.val_r2) for o in ref]
        same = [(o.constants, o.val_r2, o.ok, o.recipe) for o in out] == \
            [(o.constants, o.val_r2, o.ok, o.recipe) for o in ref]
        row[f"dask{workers}_s"] = t
        row[f"dask{workers}_cpu_s"] = cpu
        row[f"dask{workers}_cpu_overhead"] = (cpu - cpu_serial) / cpu_serial
        row[f"dask{workers}_cpu_overhead_ms_per_candidate"] = 1000 * (cpu - cpu_serial) / n
        row[f"dask{workers}_startup_s"] = started
        row[f"dask{workers}_warmup_s"] = warm
        row[f"dask{workers}_identical"] = same
        row[f"dask{workers}_overhead"] = (workers * t - t_serial) / t_serial
        row[f"dask{workers}_overhead_ms_per_candidate"] = 1000 * (workers * t - t_serial) / n
        # the same, with each side's own fit time taken out: what dispatching costs beyond the fits,
        # which does not move with how fast the fits ran under the machine's load
        dispatch = (workers * t - sum(o.seconds for o in out)) - outside_serial
        row[f"dask{workers}_dispatch_ms_per_candidate"] = 1000 * dispatch / n
        row[f"dask{workers}_dispatch_overhead"] = dispatch / t_serial
    row["speedup_dask2_vs_serial"] = t_serial / row["dask2_s"]
    # what the Dask path costs beyond the same parallelism on one machine: per candidate, and as a share
    row["dask2_vs_pool2_overhead"] = (row["dask2_s"] - row["pool2_s"]) / row["pool2_s"]
    row["dask2_vs_pool2_ms_per_candidate"] = 1000 * (row["dask2_s"] - row["pool2_s"]) / n
    return row


def data_task(run_dir: Path) -> str:
    con = sqlite3.connect(run_dir / "campaign.sqlite")
    try:
        return json.loads(con.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])["task"]
    finally:
        con.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=SLDBENCH)
    ap.add_argument("--seeds", default="0-1")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--population", type=int, default=6)
    ap.add_argument("--islands", type=int, default=2)
    ap.add_argument("--children", type=int, default=5)
    ap.add_argument("--fit-starts", type=int, default=16, dest="fit_starts")
    ap.add_argument("--workers", type=int, default=2, help="dask LocalCluster workers for the sweep")
    ap.add_argument("--repeats", type=int, default=4,
                    help="timings of the overhead part, dask and its baseline in turns (min of each taken)")
    ap.add_argument("--out", help="keep the sweep directories here (default: a temporary folder)")
    ap.add_argument("--json", help="write the numbers to this file")
    ap.add_argument("--skip-sweep", action="store_true", help="only the overhead part (needs --out from a run)")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--dask-first", action="store_true", help="run the dask sweep before the one-process sweep")
    ap.add_argument("--overhead-generations", type=int, dest="overhead_generations",
                    help="time only the first K generations of each run's fit jobs (a default-budget run has 60)")
    ap.add_argument("--overhead-from", dest="overhead_from",
                    help="take the overhead part's fit jobs from finished campaigns under DIR/<task>/ (e.g. default-"
                         "budget runs, ~950 candidates each) instead of the short sweep's runs")
    args = ap.parse_args()

    from discovery.search.executors import require_dask

    require_dask()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="kepler-scaleout-"))
    one, many = root / "local-1", root / f"dask-{args.workers}"
    report: dict = {"cores": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                    "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "grid": {
        "tasks": args.tasks, "seeds": args.seeds, "generations": args.generations, "population": args.population,
        "islands": args.islands, "children": args.children, "fit_starts": args.fit_starts}}
    if not args.skip_sweep:
        print(f"sweep: {len(args.tasks)} tasks x seeds {args.seeds}", flush=True)
        order = ["dask", "local"] if args.dask_first else ["local", "dask"]
        for kind in order:
            print(f"  {kind} ...", end=" ", flush=True)
            if kind == "local":
                t_one, table_one = run_sweep(one, args, "local", 1)
            else:
                t_many, table_many = run_sweep(many, args, "dask", args.workers)
            print(f"{t_one if kind == 'local' else t_many:.1f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
        same, diffs = compare_sweeps(one, many)
        report["sweep"] = {"local_1_process_s": t_one, f"dask_{args.workers}_workers_s": t_many,
                           "speedup": t_one / t_many, "identical": same and table_one == table_many,
                           "differences": diffs, "runs": len(list(one.rglob("campaign.sqlite")))}
    rows = []
    for task in OVERHEAD_TASKS:
        if task not in args.tasks or args.skip_overhead:
            continue
        if args.overhead_from:
            run_dir = next(Path(args.overhead_from, task).rglob("campaign.sqlite")).parent
        else:
            run_dir = one / task / f"offline-seed{args.seeds.split('-')[0].split(',')[0]}"
        print(f"overhead: {task} ...", flush=True)
        rows.append(overhead(run_dir, args.repeats, args.overhead_generations))
    report["overhead"] = rows
    report["load_avg_at_end"] = os.getloadavg()

    print()
    if "sweep" in report:
        s = report["sweep"]
        print(f"| sweep ({s['runs']} runs) | local, 1 process | dask, {args.workers} workers | speed-up | identical |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| wall s | {s['local_1_process_s']:.1f} | {s[f'dask_{args.workers}_workers_s']:.1f} | "
              f"{s['speedup']:.2f}x | {'yes' if s['identical'] else 'NO: ' + '; '.join(s['differences'][:5])} |")
        print()
    if rows:
        print("| task | train rows | candidates | serial ms/cand | dask-1 overhead | dask-2 wall s (serial s) | "
              "dask-2 vs local pool of 2 | "
              "dask-2 overhead, end to end | dask-2 overhead, dispatch only | dask-2 overhead, CPU | dask-2 speed-up | "
              "cluster start + warm-up s | identical |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['task']} | {r['train_rows']} | {r['candidates']} | {r['serial_ms_per_candidate']:.1f} | "
                  f"{100 * r['dask1_overhead']:+.1f}% ({r['dask1_overhead_ms_per_candidate']:+.1f} ms) | "
                  f"{r['dask2_s']:.2f} ({r['serial_s']:.2f}) | {100 * r['dask2_vs_pool2_overhead']:+.1f}% "
                  f"({r['dask2_vs_pool2_ms_per_candidate']:+.1f} ms; pool {r['pool2_s']:.2f} s) | "
                  f"{100 * r['dask2_overhead']:+.1f}% "
                  f"({r['dask2_overhead_ms_per_candidate']:+.1f} ms) | {100 * r['dask2_dispatch_overhead']:+.1f}% "
                  f"({r['dask2_dispatch_ms_per_candidate']:+.1f} ms) | {100 * r['dask2_cpu_overhead']:+.1f}% "
                  f"({r['dask2_cpu_overhead_ms_per_candidate']:+.1f} ms) | {r['speedup_dask2_vs_serial']:.2f}x | "
                  f"{r['dask2_startup_s']:.1f} + {r['dask2_warmup_s']:.1f} | "
                  f"{'yes' if r['dask1_identical'] and r['dask2_identical'] and r['pool2_identical'] else 'NO'} |")
    print(f"\nload average (1, 5, 15 min): start {report['load_avg_at_start']}, end {report['load_avg_at_end']}; "
          f"{report['cores']} cores; sweep dirs in {root}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
