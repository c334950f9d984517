"""`kepler discover` (run or resume a campaign, with a live panel) and `kepler runs` (list runs)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from discovery.cli.console import make_console, num, showing
from discovery.cli.owndata import add_options as add_owndata_options
from discovery.laws.shape import SHAPE_KEPT

RESULTS_DIR = Path("results")

console = make_console()


def _progress_panel(p) -> Table:
    t = Table.grid(padding=(0, 2))
    elapsed = __import__("time").monotonic() - p.started
    t.add_row("generation", f"{p.generation + 1}/{p.generations}", "status", p.status)
    t.add_row("evaluated", str(p.evaluated), "candidates/s", f"{p.rate:.1f}")
    t.add_row("rejected", str(p.rejected), "duplicates skipped", str(p.duplicates))
    t.add_row("best validation R²", num(p.best_val_r2), "elapsed", f"{elapsed:.0f}s")
    llm = p.llm or {}
    t.add_row("LLM calls", f"{llm.get('calls', 0)} ({llm.get('cached', 0)} cached, {llm.get('failed', 0)} failed, "
              f"{llm.get('retries', 0)} retries)",
              "tokens / cost", f"{llm.get('prompt_tokens', 0) + llm.get('completion_tokens', 0)} / "
              f"${llm.get('cost_usd', 0.0):.4f}")
    if p.llm_event:
        t.add_row("LLM last error", p.llm_event[:160], "", "")
    for warning in p.warnings:
        t.add_row("warning", warning[:400], "", "")
    t.add_row("best law", p.best_formula[:100], "", "")
    if p.clock:
        t.add_row("[yellow]clock[/]", f"[yellow]{p.clock}[/]", "", "")
    return t


def _llm_lines(result: dict) -> list[str]:
    """The run's LLM calls in one line, its errors, and its warnings."""
    llm = result.get("llm") or {}
    lines = []
    if llm.get("calls"):
        lines.append(f"LLM: {llm['calls']} calls ({llm.get('cached', 0)} cached), {llm.get('failed', 0)} failed, "
                     f"{llm.get('retries', 0)} retries, ${llm.get('cost_usd', 0.0):.4f}")
        lines += [f"  LLM error x{n}: {e}" for e, n in (llm.get("errors") or {}).items()]
    return lines + [f"[yellow]warning:[/] {escape(w)}" for w in result.get("warnings") or []]


def _final_table(result: dict) -> Table:
    clock = f" [yellow]{result['clock']}.[/]" if result.get("clock") else ""
    table = Table(title=f"{result['task']}: discovered vs human. {result.get('how', '')}{clock}")
    columns = ["law", "formula", "constants", "complexity", "R² validation", "R² test", "NMSE test", "NMAE test"]
    with_shape = any(r.get("shape") for r in [*result["pareto_front"], *result["human"]])
    for col in columns + (["shape priors"] if with_shape else []):
        table.add_column(col, overflow="fold")
    best = result["best"]
    rows = [("best (discovered)" if r["id"] == best["id"] else f"Pareto #{r['id']}", r)
            for r in result["pareto_front"]]
    rows += [(f"human: {h['law']} ({h['constants_from']})", h) for h in result["human"]]
    for tag, r in rows:
        cells = [tag, r["formula"], str(r["n_constants"]), str(r["complexity"]), num(r["validation"]["r2"]),
                 num(r["test"]["r2"]), num(r["test"]["nmse"]), num(r["test"]["nmae"])]
        if with_shape:
            cells.append("kept" if r.get("shape") == SHAPE_KEPT else (r.get("shape") or ""))
        table.add_row(*cells)
    return table


def cmd_discover(args: argparse.Namespace) -> int:
    from rich.live import Live

    from discovery.laws import guard
    from discovery.search.campaign import Campaign, load_settings_file, make_settings

    guard.prestart()  # forked now, while this process has one thread: human laws and LLM formulas go through it

    overrides = {k: getattr(args, k) for k in ("proposer", "seed", "generations", "population", "islands",
                                                "children", "time_limit", "model", "base_url", "max_llm_calls",
                                                "max_tokens", "max_cost_usd", "price_in", "price_out", "llm_timeout",
                                                "out", "llm_cache_dir", "structured", "executor", "workers",
                                                "scheduler")}
    if args.replay:
        overrides["replay_only"] = True
    live = Live(console=console, refresh_per_second=4, transient=False)
    update = lambda p: live.update(_progress_panel(p))  # noqa: E731
    if args.resume:
        if args.task or args.config or args.csv:
            raise ValueError("--resume continues a run with its own task and settings; give no task, --config or --csv")
        campaign = Campaign.resume(Path(args.resume), overrides=overrides, on_progress=update)
        for change in campaign.changes:
            console.print(f"resumed with {change}")
    else:
        if args.csv:
            from discovery.cli.owndata import task_from_csv, task_name

            if args.task or args.config:
                raise ValueError("give either a task, --config or --csv")
            out = Path(args.out) if args.out else RESULTS_DIR / task_name(args) / _run_name(args)
            args.task, overrides["out"] = task_from_csv(args, out), str(out)
        if args.config:
            settings = load_settings_file(Path(args.config), task=args.task, **overrides)
        else:
            if not args.task:
                raise ValueError("give a task (see `kepler tasks`), --csv FILE, a --config file, or --resume DIR")
            settings = make_settings(task=args.task, **{k: v for k, v in overrides.items() if v is not None})
        campaign = Campaign(settings, on_progress=update)
    console.print(f"run directory: {campaign.run_dir}")
    try:
        with showing(live):
            result = campaign.run()
    except KeyboardInterrupt:  # the campaign marked itself interrupted and stopped its workers
        console.print(f"\n[yellow]stopped.[/] Everything evaluated so far is saved. Resume with:\n"
                      f"  kepler discover --resume {campaign.run_dir}")
        return 130
    finally:
        campaign.close()
    if "best" not in result:
        console.print(f"[red]{result.get('status')}[/]: stopped by {escape(str(result.get('stop_reason')))}"
                      + (f" [yellow]{result['clock']}[/]" if result.get("clock") else ""), soft_wrap=True)
        for line in _llm_lines(result):
            console.print(line, soft_wrap=True)
        return 1
    console.print(_final_table(result))
    for line in _llm_lines(result):
        console.print(line, soft_wrap=True)
    console.print(f"stopped by {result['stop_reason']}; {result['candidates_evaluated']} candidates evaluated in "
                  f"{result['wall_seconds']}s; best.json in {campaign.run_dir}")
    if result.get("clock"):
        console.print(f"[yellow]{result['clock']}[/]")
    return 0


def _run_name(args: argparse.Namespace) -> str:
    import time

    return f"{args.proposer or 'offline'}-seed{args.seed or 0}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_runs(args: argparse.Namespace) -> int:
    from discovery.search.runs import find_runs, remembered

    given = [*args.dirs, *([args.dir] if args.dir else [])]
    for d in given:
        if not Path(d).is_dir():
            raise ValueError(f"{d}: no such directory")
    roots = [Path(d) for d in given] or [*([RESULTS_DIR] if RESULTS_DIR.is_dir() else []), *remembered()]
    runs = find_runs(*roots)
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    where = ", ".join(map(str, given)) if given else f"{RESULTS_DIR}/ and the runs written with --out"
    table = Table(title=f"Runs under {where}")
    for col in ("run", "task", "proposer", "seed", "status", "evaluated", "best R² validation", "best R² test"):
        table.add_column(col, overflow="fold")
    for r in runs:
        table.add_row(r["run_dir"], r["task"], r["proposer"], str(r["seed"]), r["status"], str(r["evaluated"]),
                      num(r["best_val_r2"]), num(r["best_test_r2"]))
    console.print(table)
    return 0


def add_commands(sub) -> None:
    """Register `discover` and `runs` on the main parser's subparsers."""
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
    p.add_argument("--max-cost-usd", type=float, dest="max_cost_usd",
                   help="dollar budget (needs the model's price: known ones, --price-in/--price-out, or [prices])")
    p.add_argument("--price-in", type=float, dest="price_in", help="USD per million prompt tokens of --model")
    p.add_argument("--price-out", type=float, dest="price_out", help="USD per million completion tokens of --model")
    p.add_argument("--time-limit", type=float, dest="time_limit",
                   help="seconds of search (default none: the generations budget decides; a limit that binds makes "
                   "the result depend on machine speed, and the run says so)")
    p.add_argument("--llm-timeout", type=float, dest="llm_timeout",
                   help="seconds for one LLM request as a whole (default 60; raise it for a slow local model)")
    p.add_argument("--llm-cache-dir", dest="llm_cache_dir")
    p.add_argument("--replay", action="store_true", help="LLM replies from the cache only; no network")
    p.add_argument("--structured", choices=["auto", "schema", "json", "off"],
                   help="LLM reply format (auto: JSON schema, falling back to JSON object, then plain text)")
    p.add_argument("--executor", choices=["serial", "local", "dask"], help="where fits run (default local pool)")
    p.add_argument("--workers", type=int, help="worker processes (local) or LocalCluster workers (dask)")
    p.add_argument("--scheduler", help="an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--out", help="run directory (default results/<task>/<proposer>-seed<N>-<time>)")
    add_owndata_options(p)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("runs", help="list campaign runs (results/ and every run written with --out)")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="folders to search, or run directories (default: results/ "
                   "and the runs written with --out)")
    p.add_argument("--dir", help="a folder to search (same as giving DIR)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)
