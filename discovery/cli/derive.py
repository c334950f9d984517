"""`kepler derive RUN_DIR`: compute-optimal allocation and predictions beyond the largest run, with
bootstrap intervals, for the run's law and (side by side) the task's human laws fitted by Kepler."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from discovery.cli.console import make_console
from discovery.cli.papers import attach_with_progress, common_arguments

console = make_console()


def _pairs(task, texts: list[str] | None):
    from discovery.outputs.derive import parse_point

    return [parse_point(task, t) for t in texts or []]


def cmd_derive(args: argparse.Namespace) -> int:
    from discovery.outputs.derive import derive
    from discovery.outputs.export import derived as tables
    from discovery.outputs.export.latex import law_label
    from discovery.outputs.export.tables import fmt
    from discovery.outputs.human import human_records
    from discovery.outputs.record import cache_dir, record_from_run

    record = record_from_run(Path(args.run_dir), args.candidate)
    protocol = record.extra["protocol"]
    points = _pairs(record.task, args.at)
    hold = {}
    for text in args.hold or []:
        hold |= _pairs(record.task, [text])[0]
    laws = [record]
    if not args.no_human:
        laws += human_records(record.task, protocol, record.seed, None if args.no_cache else cache_dir(record))
    results = []
    for law in laws:
        boot = None
        if args.bootstrap > 0:
            if law is not record:
                law.run_dir = record.run_dir  # its bootstrap is cached with the run's
            boot = attach_with_progress(law, protocol, args, what=f" ({law.label})")
        results.append(derive(law, protocol.train, boot, points, args.cost, hold))
    out = Path(args.out) if args.out else Path(args.run_dir) / "derive"
    out.mkdir(parents=True, exist_ok=True)
    (out / "derived.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    (out / "derived.md").write_text(tables.markdown(results))
    (out / "derived.tex").write_text(tables.latex(results, f"tab:{law_label(record)}"))
    if args.json:
        print(json.dumps(results, indent=2, allow_nan=False))
        return 0
    console.print(tables.note(results))
    found = tables.allocations(results)
    if found:
        t = Table(title=f"Compute-optimal allocation of {record.task.name} (C = {results[0]['cost']})")
        for col in ("law", "group", "a", "a 95%", "b", "b 95%", "N_opt at 100x the largest C", "D_opt there"):
            t.add_column(col, overflow="fold")
        for law, a in found:
            last = a["budgets"][-1]
            t.add_row(law, a["group"], fmt(a["a"], 3), tables.interval(a.get("a_95")), fmt(a["b"], 3),
                      tables.interval(a.get("b_95")), fmt(last["n_opt"], 3), fmt(last["d_opt"], 3))
        console.print(t)
    t = Table(title="Predictions (law band: constants' uncertainty; prediction band: plus a train residual)")
    for col in ("law", "group", "at", "point", "prediction", "law band", "prediction band"):
        t.add_column(col, overflow="fold")
    for d in results:
        groups = list(dict.fromkeys(p["group"] for p in d["predictions"]))[:args.max_groups]
        for p in d["predictions"]:
            if p["group"] in groups:
                t.add_row(d["law"], p["group"], p["at"], ", ".join(f"{k}={fmt(v, 3)}" for k, v in p["point"].items()),
                          fmt(p["value"], 4), tables.interval(p["law_band_95"], 4),
                          tables.interval(p["prediction_band_95"], 4))
    console.print(t)
    for name in ("derived.json", "derived.md", "derived.tex"):
        console.print(f"written: {out / name}")
    return 0


def add_commands(sub) -> None:
    """Register `derive` on the main parser's subparsers."""
    p = sub.add_parser("derive", help="compute-optimal allocation and predictions (with intervals) of a run's law")
    common_arguments(p)
    p.add_argument("--at", action="append", metavar="POINT",
                   help='predict at a point, e.g. "N=7e10,D=1.4e12" (repeatable; unnamed variables at train medians)')
    p.add_argument("--cost", help='compute as a formula over the task variables (default "6*N*D")')
    p.add_argument("--hold", action="append", metavar="VALUES",
                   help='values the other variables are held at, e.g. "V=32000" (default: train medians)')
    p.add_argument("--no-human", action="store_true", help="only the run's law, not the task's human laws")
    p.add_argument("--max-groups", type=int, default=12, help="groups printed per law (all are in derived.json)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of tables")
    p.set_defaults(func=cmd_derive)
