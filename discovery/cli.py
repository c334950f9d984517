"""`kepler` command line: tasks, fit, bench (and discover/runs once campaigns land)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from discovery.console import make_console, showing
from discovery.shape import SHAPE_KEPT
from discovery.tasks import TaskError, list_tasks, load_task

console = make_console()
err_console = make_console(stderr=True)


def _num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"


def cmd_tasks(args: argparse.Namespace) -> int:
    from discovery.data import load_frame

    table = Table(title="Kepler tasks", show_lines=False)
    for col in ("task", "rows train/test", "groups", "variables → target", "constant limit", "source"):
        table.add_column(col, overflow="fold")
    rows = []
    for name in list_tasks():
        task = load_task(name)
        frame = load_frame(task)
        n_train = int((frame["split"] == "train").sum())
        n_test = int((frame["split"] == "test").sum())
        groups = frame["group"].nunique()
        mapping = ", ".join(f"{v.symbol}={v.column}" for v in task.variables) + " → " + ", ".join(task.targets)
        limit = "none" if task.constant_limit is None else str(task.constant_limit)
        rows.append(dict(task=name, train=n_train, test=n_test, groups=groups, variables=mapping,
                         constant_limit=task.constant_limit, source=task.paper))
        table.add_row(name, f"{n_train}/{n_test}", str(groups), mapping, limit, task.paper)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(table)
    return 0


def _specs_for_formula(task, law):
    """If the typed formula is one of the task's human laws, reuse its constants' inits and bounds."""
    from evaluators.benchmark import parse_human_law

    for human in task.human_laws:
        if not human.constants:
            continue
        ref = parse_human_law(task, human)
        if ref.hash == law.hash:
            by_canonical = {rc_i: human.constants.get(rc.name) for rc_i, rc in enumerate(ref.constants)}
            return {c.name: by_canonical[i] for i, c in enumerate(law.constants) if by_canonical[i] is not None}, human
    return None, None


def cmd_fit(args: argparse.Namespace) -> int:
    from discovery.data import load_frame
    from discovery.fit import FitOptions, fit_law
    from discovery.law import parse_law
    from evaluators.metrics import score
    from evaluators.protocol import Protocol

    if getattr(args, "from_json", None):
        from discovery.cli_papers import fit_from_json

        return fit_from_json(args)
    if not args.task or not args.formula:
        raise ValueError("give a task and a formula, or --from law.json")
    task = load_task(args.task)
    law = parse_law(args.formula, task.symbols, max_constants=task.constant_limit,
                    column_hints=task.symbol_for_column())
    specs, human = _specs_for_formula(task, law)
    settings = human.fit if human else None
    opts = FitOptions(seed=args.seed, n_starts=args.starts)
    if settings is not None:
        opts = FitOptions.from_settings(settings, seed=args.seed, n_starts=args.starts)
    if args.loss:
        opts = FitOptions(**{**opts.__dict__, "loss": args.loss, "f_scale": args.f_scale,
                             "log_residuals": args.log_residuals})
    protocol = Protocol(task, load_frame(task))
    val_fit = fit_law(law, protocol.fit_part, task.targets, specs, opts)
    val_scores = protocol.validation_score(val_fit.predict(protocol.validation))
    full_fit = fit_law(law, protocol.train, task.targets, specs, opts)
    test = protocol.final_test(purpose="kepler fit: report a user's formula")
    test_scores = score(test.Y, full_fit.predict(test))

    groups = protocol.train.group_names
    result = {
        "task": task.name, "formula": law.text, "canonical": law.canonical, "hash": law.hash,
        "complexity": law.complexity,
        "constants": {f"{g}/{task.targets[t]}" if len(task.targets) > 1 else g: full_fit.constants(g, t)
                      for g in groups for t in range(len(task.targets))},
        "failures": full_fit.failures,
        "validation": {**val_scores.as_dict(), "fitted_on": "fit part of train", "rows": len(protocol.validation)},
        "test": {**test_scores.as_dict(), "fitted_on": "all of train", "rows": len(test)},
        "fit_options": opts.__dict__,
    }
    if args.json:
        print(json.dumps(result, indent=2, default=float))
        return 0
    console.print(f"[bold]{task.name}[/]: {law.text}   (canonical {law.canonical}, {len(law.constants)} constants)")
    if human:
        console.print(f"Recognised as human law [italic]{human.name}[/]: using its initial values, bounds and fit settings.")
    ctable = Table(title="Constants fitted on all of train, per group")
    ctable.add_column("group")
    for c in law.constant_names:
        ctable.add_column(c, justify="right")
    for key, consts in list(result["constants"].items())[: args.max_groups]:
        ctable.add_row(key, *[_num(v) for v in consts.values()])
    console.print(ctable)
    if len(result["constants"]) > args.max_groups:
        console.print(f"… {len(result['constants']) - args.max_groups} more groups (use --json for all)")
    for failure in full_fit.failures[:5]:
        err_console.print(f"[red]fit failed[/] {failure}")
    mtable = Table(title="Scores (SLDBench definitions)")
    for col in ("split", "rows", "fitted on", "R²", "NMSE", "NMAE"):
        mtable.add_column(col)
    mtable.add_row("validation (held-out slice of train)", str(len(protocol.validation)), "fit part of train",
                   _num(val_scores.r2), _num(val_scores.nmse), _num(val_scores.nmae))
    mtable.add_row("test", str(len(test)), "all of train", _num(test_scores.r2), _num(test_scores.nmse),
                   _num(test_scores.nmae))
    console.print(mtable)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from evaluators.benchmark import run_bench, write_results

    names = args.tasks or list_tasks()
    if args.json:
        rows = run_bench(names, seed=args.seed)
    else:
        with console.status("benchmarking human laws") as status:
            rows = run_bench(names, seed=args.seed, progress=lambda m: status.update(f"bench: {m}"))
    paths = write_results(rows, Path(args.out))
    if args.runs:
        from discovery.cli_papers import bench_with_runs

        return bench_with_runs(args, rows, paths)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    table = Table(title="Human laws on the test split (fitted on train by Kepler, or the paper's constants)")
    for col in ("task", "law", "constants", "R² test", "NMSE", "NMAE", "published R²", "fit s"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.task, r.law, r.variant, _num(r.r2, 3), _num(r.nmse), _num(r.nmae),
                      _num(r.published_r2, 3), _num(r.fit_seconds, 2))
    console.print(table)
    console.print(f"written: {', '.join(str(p) for p in paths)}")
    return 0


def _progress_panel(p) -> Table:
    t = Table.grid(padding=(0, 2))
    elapsed = __import__("time").monotonic() - p.started
    t.add_row("generation", f"{p.generation + 1}/{p.generations}", "status", p.status)
    t.add_row("evaluated", str(p.evaluated), "candidates/s", f"{p.rate:.1f}")
    t.add_row("rejected", str(p.rejected), "duplicates skipped", str(p.duplicates))
    t.add_row("best validation R²", _num(p.best_val_r2), "elapsed", f"{elapsed:.0f}s")
    llm = p.llm or {}
    t.add_row("LLM calls", f"{llm.get('calls', 0)} ({llm.get('cached', 0)} cached)",
              "tokens / cost", f"{llm.get('prompt_tokens', 0) + llm.get('completion_tokens', 0)} / "
              f"${llm.get('cost_usd', 0.0):.4f}")
    t.add_row("best law", p.best_formula[:100], "", "")
    return t


def _final_table(result: dict) -> Table:
    table = Table(title=f"{result['task']}: discovered vs human. {result.get('how', '')}")
    columns = ["law", "formula", "constants", "complexity", "R² validation", "R² test", "NMSE test", "NMAE test"]
    with_shape = any(r.get("shape") for r in [*result["pareto_front"], *result["human"]])
    for col in columns + (["shape priors"] if with_shape else []):
        table.add_column(col, overflow="fold")
    best = result["best"]
    rows = [("best (discovered)" if r["id"] == best["id"] else f"Pareto #{r['id']}", r)
            for r in result["pareto_front"]]
    rows += [(f"human: {h['law']} ({h['constants_from']})", h) for h in result["human"]]
    for tag, r in rows:
        cells = [tag, r["formula"], str(r["n_constants"]), str(r["complexity"]), _num(r["validation"]["r2"]),
                 _num(r["test"]["r2"]), _num(r["test"]["nmse"]), _num(r["test"]["nmae"])]
        if with_shape:
            cells.append("kept" if r.get("shape") == SHAPE_KEPT else (r.get("shape") or ""))
        table.add_row(*cells)
    return table


def cmd_discover(args: argparse.Namespace) -> int:
    from rich.live import Live

    from discovery.campaign import Campaign, CampaignSettings, load_settings_file

    overrides = {k: getattr(args, k) for k in ("proposer", "seed", "generations", "population", "islands",
                                                "children", "time_limit", "model", "base_url", "max_llm_calls",
                                                "max_tokens", "max_cost_usd", "out", "llm_cache_dir", "structured",
                                                "executor", "workers", "scheduler")}
    if args.replay:
        overrides["replay_only"] = True
    live = Live(console=console, refresh_per_second=4, transient=False)
    update = lambda p: live.update(_progress_panel(p))  # noqa: E731
    if args.resume:
        campaign = Campaign.resume(Path(args.resume), on_progress=update)
    else:
        if args.config:
            settings = load_settings_file(Path(args.config), task=args.task, **overrides)
        else:
            if not args.task:
                raise ValueError("give a task (see `kepler tasks`), a --config file, or --resume DIR")
            settings = CampaignSettings(task=args.task, **{k: v for k, v in overrides.items() if v is not None})
        campaign = Campaign(settings, on_progress=update)
    console.print(f"run directory: {campaign.run_dir}")
    try:
        with showing(live):
            result = campaign.run()
    except KeyboardInterrupt:
        campaign.store.set_meta(status="interrupted")
        console.print(f"\n[yellow]stopped.[/] Everything evaluated so far is saved. Resume with:\n"
                      f"  kepler discover --resume {campaign.run_dir}")
        return 130
    if "best" not in result:
        console.print(f"[red]{result.get('status')}[/] ({result.get('stop_reason')})")
        return 1
    console.print(_final_table(result))
    console.print(f"stopped by {result['stop_reason']}; {result['candidates_evaluated']} candidates evaluated in "
                  f"{result['wall_seconds']}s; best.json in {campaign.run_dir}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from discovery.runs import find_runs

    runs = find_runs(Path(args.dir))
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    table = Table(title=f"Runs under {args.dir}")
    for col in ("run", "task", "proposer", "seed", "status", "evaluated", "best R² validation", "best R² test"):
        table.add_column(col, overflow="fold")
    for r in runs:
        table.add_row(r["run_dir"], r["task"], r["proposer"], str(r["seed"]), r["status"], str(r["evaluated"]),
                      _num(r["best_val_r2"]), _num(r["best_test_r2"]))
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kepler", description="Discover scaling laws from experimental data.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tasks", help="list the curated tasks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("fit", help="fit a formula to a task and score it on validation and test")
    p.add_argument("task", nargs="?")
    p.add_argument("formula", nargs="?")
    p.add_argument("--from", dest="from_json", metavar="LAW_JSON", help="score a `kepler export` law.json as saved")
    p.add_argument("--refit", action="store_true", help="with --from: refit the formula instead of using its constants")
    p.add_argument("--predictions", metavar="CSV", help="with --from: write every row's prediction to this file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--starts", type=int, default=128, help="quasi-random starts screened per fit")
    p.add_argument("--loss", choices=["linear", "huber", "soft_l1", "cauchy"])
    p.add_argument("--f-scale", type=float, default=1.0)
    p.add_argument("--log-residuals", action="store_true")
    p.add_argument("--max-groups", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("bench", help="benchmark the human laws on the official test splits")
    p.add_argument("tasks", nargs="*", help="task names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bench")
    p.add_argument("--runs", metavar="DIR", help="add the best discovered law of every finished run under DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("discover", help="run (or resume) a discovery campaign on a task")
    p.add_argument("task", nargs="?")
    p.add_argument("--config", help="TOML campaign file with the same settings as the flags")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted or killed campaign")
    p.add_argument("--proposer", choices=["offline", "llm", "mixed"])
    p.add_argument("--model")
    p.add_argument("--base-url", dest="base_url")
    p.add_argument("--seed", type=int)
    p.add_argument("--generations", type=int)
    p.add_argument("--population", type=int, help="members kept per island")
    p.add_argument("--islands", type=int)
    p.add_argument("--children", type=int, help="candidates per island per generation")
    p.add_argument("--max-llm-calls", type=int, dest="max_llm_calls")
    p.add_argument("--max-tokens", type=int, dest="max_tokens", help="total LLM tokens budget")
    p.add_argument("--max-cost-usd", type=float, dest="max_cost_usd")
    p.add_argument("--time-limit", type=float, dest="time_limit", help="seconds of search")
    p.add_argument("--llm-cache-dir", dest="llm_cache_dir")
    p.add_argument("--replay", action="store_true", help="LLM replies from the cache only; no network")
    p.add_argument("--structured", choices=["auto", "schema", "json", "off"],
                   help="LLM reply format (auto: JSON schema, falling back to JSON object, then plain text)")
    p.add_argument("--executor", choices=["serial", "local", "dask"], help="where fits run (default local pool)")
    p.add_argument("--workers", type=int, help="worker processes (local) or LocalCluster workers (dask)")
    p.add_argument("--scheduler", help="an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--out", help="run directory (default results/<task>/<proposer>-seed<N>-<time>)")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("runs", help="list campaign runs")
    p.add_argument("--dir", default="results")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    from discovery.cli_papers import add_commands as add_paper_commands
    from discovery.cli_sweep import add_commands as add_sweep_commands

    add_paper_commands(sub)  # export, plot, report
    add_sweep_commands(sub)  # sweep
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TaskError, ValueError) as exc:  # LawError, DataError and TaskError are ValueErrors
        err_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
