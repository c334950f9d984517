"""Search quality over every curated task and several seeds, in one command, through `kepler sweep`.

    python benchmarks/discovery_quality.py --out results/quality/main
    python benchmarks/discovery_quality.py --out results/quality/main-nested --nested   # validation-only evidence

Runs the 8 SLDBench tasks at seeds 0-4 and the 4 other curated tasks at seeds 0-2 at the default campaign
budget (one `kepler sweep` per group, so it runs on a Dask cluster with `--executor dask --scheduler ...` and
resumes after an interruption: run the same command again). Then prints and writes (`quality.json`,
`quality.md` in --out), per task: mean, min and max test R2 of the best law over seeds (clipped at -1, as
SLDBench does), the human law's test R2 (Kepler's fit; published); per seed: the mean over the 8 SLDBench
tasks and how many match or beat the human law (Kepler fit); and candidates evaluated per second per core,
campaign wall time and peak memory.

`--nested` is how search and selection rules are chosen without looking at any test split: every task is
rebuilt one level down, its train rows only, with the validation slice the campaign would have selected on
relabelled as the test split (real test rows dropped). The nested campaign then carves its own validation
out of the remaining rows by the same rule, so its "test R2" measures how well the whole pipeline
extrapolates one step, on rows that real campaigns only ever use for validation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from discovery.tasks.data import load_frame  # noqa: E402
from discovery.tasks.spec import list_tasks, load_task  # noqa: E402
from evaluators.protocol import validation_mask  # noqa: E402

NESTED = "_nested"  # suffix of a nested task's name


def clip(r2: float | None) -> float:
    """SLDBench's convention: a failed or missing score is -1, and R2 is clipped at -1."""
    return -1.0 if r2 is None or not math.isfinite(r2) else max(-1.0, r2)


def groups_of_tasks(only: list[str] | None) -> dict[str, list[str]]:
    names = only or list_tasks()
    curated = [n for n in names if load_task(n).sldbench]
    other = [n for n in names if not load_task(n).sldbench]
    return {"sldbench": curated, "other": other}


# --- nested tasks: validation-only evidence ------------------------------------------------------------
def write_nested_tasks(names: list[str], root: Path) -> tuple[Path, Path]:
    """One nested task per curated task: train rows only, the campaign's validation slice as the test split.

    Returns (tasks_dir, data_dir) for KEPLER_TASKS_DIR and KEPLER_DATA_DIR."""
    tasks_dir, data_dir = root / "tasks", root / "data"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        task = load_task(name)
        frame = load_frame(task).reset_index(drop=True)
        train = frame[frame["split"] == "train"].copy()
        val = validation_mask(task.split, train)
        train["split"] = ["test" if v else "train" for v in val]
        nested = f"{name}{NESTED}"
        out = data_dir / nested / "data.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        train.to_csv(out, index=False)
        spec = tomllib.loads((REPO / "tasks" / f"{name}.toml").read_text())
        text = (REPO / "tasks" / f"{name}.toml").read_text()
        text = text.replace(f'name = "{spec["name"]}"', f'name = "{nested}"', 1)
        (tasks_dir / f"{nested}.toml").write_text(text)
    return tasks_dir, data_dir


# --- running the sweeps ---------------------------------------------------------------------------------
def run_sweep(tasks: list[str], seeds: str, sweep_dir: Path, args: argparse.Namespace, env: dict) -> None:
    cmd = [sys.executable, "-m", "discovery", "sweep"]
    if (sweep_dir / "sweep.json").exists():
        cmd += ["--resume", str(sweep_dir)]
        if args.executor:
            cmd += ["--executor", args.executor]
    else:
        cmd += ["--tasks", ",".join(tasks), "--seeds", seeds, "--out", str(sweep_dir)]
        if args.config:
            cmd += ["--config", str(Path(args.config).resolve())]
        for flag in ("generations", "time_limit", "executor"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if args.scheduler:
        cmd += ["--scheduler", args.scheduler]
    print("+", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, env=env, cwd=REPO).returncode
    if code != 0:
        raise SystemExit(f"sweep {sweep_dir} exited with {code}; run the same command again to resume it")


# --- the tables ----------------------------------------------------------------------------------------
def run_rows(sweep_dir: Path) -> list[dict]:
    """One dict per finished run: scores from best.json, speed from the run's store."""
    db = sqlite3.connect(sweep_dir / "sweep.sqlite")
    db.row_factory = sqlite3.Row
    rows = []
    for r in db.execute("SELECT * FROM runs ORDER BY task, seed"):
        run_dir = sweep_dir / r["run_dir"]
        best_path = run_dir / "best.json"
        if r["status"] != "finished" or not best_path.exists():
            rows.append({"task": r["task"], "seed": r["seed"], "status": r["status"]})
            continue
        best = json.loads(best_path.read_text())
        store = sqlite3.connect(run_dir / "campaign.sqlite")
        meta = {k: json.loads(v) for k, v in store.execute("SELECT key, value FROM meta")}
        store.close()
        human = next((h for h in best.get("human", []) if h.get("constants_from") == "kepler_fit"), None)
        search = float(best.get("wall_seconds") or 0.0)
        rows.append({
            "task": r["task"].removesuffix(NESTED), "seed": r["seed"], "status": "finished",
            "formula": best["best"]["formula"], "val_r2": best["best"]["validation"]["r2"],
            "test_r2": best["best"]["test"]["r2"],
            "human_law": human["law"] if human else None, "human_test_r2": human["test"]["r2"] if human else None,
            "human_published_r2": human.get("published_r2") if human and not r["task"].endswith(NESTED) else None,
            "evaluated": best.get("candidates_evaluated", 0), "search_seconds": search,
            # start to best.json, search and final report; a run interrupted and resumed spans the pause as well
            "wall_seconds": best_path.stat().st_mtime - float(meta.get("created", best_path.stat().st_mtime)),
            "stop_reason": best.get("stop_reason"),
            "close_call": None if "close_call" not in best else not best["close_call"]["decided"],  # older: None
            "generations": best.get("generations_completed"),
            "peak_rss_mb": r["peak_rss_mb"] if "peak_rss_mb" in r.keys() else None,  # sweeps made before it: none
        })
    db.close()
    return rows


def summarize(rows: list[dict], sldbench: list[str], other: list[str], peak_mb: float, nested: bool) -> dict:
    done = [r for r in rows if r["status"] == "finished"]
    per_task = []
    for task in [*sldbench, *other]:
        mine = [r for r in done if r["task"] == task.removesuffix(NESTED)]
        if not mine:
            continue
        tests = [clip(r["test_r2"]) for r in mine]
        human = clip(mine[0]["human_test_r2"]) if mine[0]["human_test_r2"] is not None else None
        rates = [r["evaluated"] / r["search_seconds"] for r in mine if r["search_seconds"] > 0]
        per_task.append({
            "task": mine[0]["task"], "sldbench": task in sldbench, "seeds": [r["seed"] for r in mine],
            "test_r2_by_seed": {str(r["seed"]): clip(r["test_r2"]) for r in mine},
            "mean": statistics.fmean(tests), "min": min(tests), "max": max(tests),
            "human_law": mine[0]["human_law"], "human_kepler_fit": human,
            "human_published": mine[0]["human_published_r2"],
            "seeds_at_least_human": sum(t >= human for t in tests) if human is not None else None,
            "candidates_per_second_per_core": statistics.fmean(rates) if rates else None,
            "evaluated_mean": statistics.fmean(r["evaluated"] for r in mine),
            "wall_seconds_max": max(r["wall_seconds"] for r in mine),
            "search_seconds_max": max(r["search_seconds"] for r in mine),  # summed over a resumed run's parts
            "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in mine),
            "stopped_by_clock": sum("time" in (r["stop_reason"] or "") for r in mine),
            "close_calls": None if any(r.get("close_call") is None for r in mine)
            else sum(r["close_call"] for r in mine),
            "peak_rss_mb_max": max((r["peak_rss_mb"] for r in mine if r["peak_rss_mb"] is not None), default=None),
        })
    per_seed = []
    seeds = sorted({r["seed"] for r in done if r["task"] in {t.removesuffix(NESTED) for t in sldbench}})
    for seed in seeds:
        mine = {r["task"]: r for r in done if r["seed"] == seed}
        tasks = [t.removesuffix(NESTED) for t in sldbench if t.removesuffix(NESTED) in mine]
        if len(tasks) < len(sldbench):
            continue
        tests = [clip(mine[t]["test_r2"]) for t in tasks]
        beat = sum(clip(mine[t]["test_r2"]) >= clip(mine[t]["human_test_r2"]) for t in tasks
                   if mine[t]["human_test_r2"] is not None)
        per_seed.append({"seed": seed, "sldbench_mean": statistics.fmean(tests), "tasks_at_least_human": beat,
                         "tasks": len(tasks)})
    means = [s["sldbench_mean"] for s in per_seed]
    human_mean = [t["human_kepler_fit"] for t in per_task if t["sldbench"] and t["human_kepler_fit"] is not None]
    return {
        "nested": nested,
        "what": ("validation-only evidence: nested tasks (train rows only, the campaign's validation slice as test)"
                 if nested else "test R2 of each run's best law, selected on validation, scored once on test"),
        "per_task": per_task, "per_seed": per_seed,
        "sldbench_mean_over_seeds": statistics.fmean(means) if means else None,
        "sldbench_worst_seed": min(means) if means else None,
        "sldbench_human_mean": statistics.fmean(human_mean) if human_mean else None,
        "peak_rss_mb": peak_mb,
        "runs_finished": len(done), "runs": len(rows),
    }


def fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(summary: dict) -> str:
    lines = [f"# Kepler discovery quality ({'nested, validation-only' if summary['nested'] else 'test split'})", "",
             summary["what"] + "; R2 clipped at -1 (SLDBench).", "",
             "| task | seeds | mean | min | max | human (Kepler fit) | human (published) | seeds ≥ human "
             "| close calls | cand/s/core | search s, 1 core (max) | peak MB (max) |", "|" + "---|" * 12]
    for t in summary["per_task"]:
        beat = "–" if t["seeds_at_least_human"] is None else f"{t['seeds_at_least_human']}/{len(t['seeds'])}"
        lines.append(f"| {t['task']} | {len(t['seeds'])} | {fmt(t['mean'])} | {fmt(t['min'])} | {fmt(t['max'])} | "
                     f"{fmt(t['human_kepler_fit'])} | {fmt(t['human_published'])} | {beat} | "
                     f"{'–' if t['close_calls'] is None else t['close_calls']} | "
                     f"{fmt(t['candidates_per_second_per_core'], 2)} | {t['search_seconds_max']:.0f} | "
                     f"{fmt(t['peak_rss_mb_max'], 0)} |")
    lines += ["", "| seed | 8-task mean | tasks ≥ human |", "|---|---|---|"]
    for s in summary["per_seed"]:
        lines.append(f"| {s['seed']} | {fmt(s['sldbench_mean'])} | {s['tasks_at_least_human']}/{s['tasks']} |")
    lines += ["", f"Mean over seeds of the 8-task mean: {fmt(summary['sldbench_mean_over_seeds'])}; worst seed: "
              f"{fmt(summary['sldbench_worst_seed'])}; human laws (Kepler fit): {fmt(summary['sldbench_human_mean'])}.",
              (f"Peak memory of any campaign process: {summary['peak_rss_mb']:.0f} MB. "
               if math.isfinite(summary["peak_rss_mb"]) else "Merged tables (peak memory: see each directory). ") +
              f"Runs finished: {summary['runs_finished']}/{summary['runs']}.",
              "Each campaign ran on one core (the sweep runs its campaigns side by side, each with the serial "
              "executor); `kepler discover` on its own fits on every core. Search s: proposing and fitting, without "
              "the final report, summed over the parts of a run that was interrupted and resumed. Close calls: "
              "seeds whose run warned that laws as good as its best on selection part from it beyond train "
              "(discovery.search.close_calls; – for runs made before it)."]
    return "\n".join(lines) + "\n"


def merge(dirs: list[str], out: Path, groups: dict[str, list[str]], nested: bool) -> int:
    """Tables over the finished runs of several benchmark directories (a run found twice counts once)."""
    rows: dict[tuple[str, int], dict] = {}
    for d in dirs:
        for name in groups:
            if groups[name] and (Path(d) / name / "sweep.sqlite").exists():
                for r in run_rows(Path(d) / name):
                    if r["status"] == "finished":
                        rows.setdefault((r["task"], r["seed"]), r)
    found = sorted(rows.values(), key=lambda r: (r["task"], r["seed"]))
    summary = summarize(found, groups["sldbench"], groups["other"], float("nan"), nested)
    summary["merged_from"] = [str(Path(d).resolve()) for d in dirs]
    summary["runs_detail"] = found
    (out / "quality.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "quality.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="benchmark directory (rerun the command to resume)")
    parser.add_argument("--nested", action="store_true", help="validation-only evidence (see the module docstring)")
    parser.add_argument("--tasks", help="a,b,c: a subset of the curated tasks (default all 12)")
    parser.add_argument("--sldbench-seeds", default="0-4")
    parser.add_argument("--other-seeds", default="0-2")
    parser.add_argument("--generations", type=int, help="override the default budget (for a quick check only)")
    parser.add_argument("--time-limit", type=float, help="seconds of search per campaign (default: the campaign's)")
    parser.add_argument("--config", help="a sweep file whose [campaign] settings every run uses (e.g. a selection "
                        "rule under study); its tasks and seeds are replaced by this benchmark's")
    parser.add_argument("--executor", choices=["serial", "local", "dask"])
    parser.add_argument("--workers", type=int)
    parser.add_argument("--scheduler")
    parser.add_argument("--merge", nargs="+", metavar="DIR",
                        help="run nothing: tables over the finished runs of these benchmark directories (one "
                        "arm's runs split over several directories, e.g. seeds 0-1 in one and 2-4 in another)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    groups = groups_of_tasks(args.tasks.split(",") if args.tasks else None)
    if args.merge:
        named = {k: [f"{n}{NESTED}" for n in v] for k, v in groups.items()} if args.nested else groups
        return merge(args.merge, out, named, args.nested)
    env = dict(os.environ)
    if args.nested:
        tasks_dir, data_dir = write_nested_tasks(groups["sldbench"] + groups["other"], out / "nested")
        env.update(KEPLER_TASKS_DIR=str(tasks_dir), KEPLER_DATA_DIR=str(data_dir))
        groups = {k: [f"{n}{NESTED}" for n in v] for k, v in groups.items()}
    t0 = time.monotonic()
    seeds = {"sldbench": args.sldbench_seeds, "other": args.other_seeds}
    for name, tasks in groups.items():
        if tasks:
            run_sweep(tasks, seeds[name], out / name, args, env)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = [r for name in groups if groups[name] for r in run_rows(out / name)]
    summary = summarize(rows, groups["sldbench"], groups["other"], peak_mb, args.nested)
    summary["benchmark_wall_seconds"] = round(time.monotonic() - t0, 1)
    summary["runs_detail"] = rows
    (out / "quality.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "quality.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
