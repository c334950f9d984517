"""`kepler discover` (run or resume a campaign, with a live panel) and `kepler runs` (list runs)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from discovery.cli.console import make_console, num, showing
from discovery.laws.shape import SHAPE_KEPT

console = make_console()


def _progress_panel(p) -> Table:
    t = Table.grid(padding=(0, 2))
    elapsed = __import__("time").monotonic() - p.started
    t.add_row("generation", f"{p.generation + 1}/{p.generations}", "status", p.status)
    t.add_row("evaluated", str(p.evaluated), "candidates/s", f"{p.rate:.1f}")
    t.add_row("rejected", str(p.rejected), "duplicates skipped", str(p.duplicates))
    t.add_row("best validation R²", num(p.best_val_r2), "elapsed", f"{elapsed:.0f}s")
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
        cells = [tag, r["formula"], str(r["n_constants"]), str(r["complexity"]), num(r["validation"]["r2"]),
                 num(r["test"]["r2"]), num(r["test"]["nmse"]), num(r["test"]["nmae"])]
        if with_shape:
            cells.append("kept" if r.get("shape") == SHAPE_KEPT else (r.get("shape") or ""))
        table.add_row(*cells)
    return table


def cmd_discover(args: argparse.Namespace) -> int:
    from rich.live import Live

    from discovery.search.campaign import Campaign, CampaignSettings, load_settings_file

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
    from discovery.search.runs import find_runs

    runs = find_runs(Path(args.dir))
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    table = Table(title=f"Runs under {args.dir}")
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
