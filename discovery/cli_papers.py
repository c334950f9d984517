"""`kepler export | plot | report`, `kepler fit --from law.json` and `kepler bench --runs DIR`.

`add_commands(subparsers)` registers the three subcommands on the main parser.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from rich.table import Table

from discovery.console import make_console

console = make_console()
err_console = make_console(stderr=True)
# The keys of discovery.export.FORMATS, listed here so `kepler --help` does not import SymPy (a test checks).
FORMAT_NAMES = ("latex", "markdown", "json", "python", "sldbench", "bibtex")


def _record(args: argparse.Namespace):
    """The chosen law of a run, with its bootstrap attached unless --bootstrap 0."""
    from discovery.export.record import record_from_run
    from discovery.uncertainty import BootstrapOptions, attach

    record = record_from_run(Path(args.run_dir), args.candidate)
    protocol = record.extra["protocol"]
    boot = None
    if args.bootstrap > 0:
        options = BootstrapOptions(n_resamples=args.bootstrap, seed=record.seed if args.seed is None else args.seed,
                                   n_jobs=args.jobs)
        with console.status(f"bootstrap: {args.bootstrap} resamples of {len(protocol.train)} train rows"):
            boot = attach(record, protocol, options)
    return record, protocol, boot


def _coverage_note(record) -> None:
    u = record.uncertainty
    if u and u.get("coverage"):
        c = u["coverage"]
        console.print(f"bootstrap: {u['resamples']} resamples in {u['seconds']:.1f}s; test coverage of the "
                      f"{int(u['level'] * 100)}% prediction band {c['prediction_band']:.1%} "
                      f"(law band {c['law_band']:.1%}) over {c['cells']} test targets")


def cmd_export(args: argparse.Namespace) -> int:
    from discovery.export import FORMATS, export

    formats = args.format or list(FORMATS)
    record, _, _ = _record(args)
    paths = export(record, formats, Path(args.out) if args.out else Path(args.run_dir) / "export")
    console.print(f"[bold]{record.task.name}[/] law {record.label} ({record.role}): {record.law.text}")
    _coverage_note(record)
    for p in paths:
        console.print(f"written: {p}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from discovery.plots import plot_all, splits_of

    record, protocol, boot = _record(args)
    out = Path(args.out) if args.out else Path(args.run_dir) / "figures"
    written = plot_all(record, splits_of(protocol, "kepler plot: mark test points"), out, boot,
                       run_dir=Path(args.run_dir), formats=tuple(args.image_format))
    for paths in written.values():
        for p in paths:
            console.print(f"written: {p}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from discovery.plots import plot_all, splits_of
    from discovery.report import write_report

    record, protocol, boot = _record(args)
    out = Path(args.out) if args.out else Path(args.run_dir)
    written = plot_all(record, splits_of(protocol, "kepler report: figures"), out / "figures", boot,
                       run_dir=Path(args.run_dir), formats=("png", "pdf"))
    pngs = {name: next(p for p in paths if p.suffix == ".png") for name, paths in written.items()}
    for p in write_report(record, Path(args.run_dir), out, pngs, protocol):
        console.print(f"written: {p}")
    _coverage_note(record)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (holds best.json and campaign.sqlite)")
    p.add_argument("--candidate", type=int, help="candidate id (default: the run's best law)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, help="bootstrap seed (default: the run's seed)")
    p.add_argument("--jobs", type=int, help="processes for the bootstrap (default: one per core)")


def add_commands(sub) -> None:
    """Register `export`, `plot` and `report` on the main parser's subparsers."""
    p = sub.add_parser("export", help="write a run's law as LaTeX, Markdown, JSON, Python, SLDBench or BibTeX")
    _common(p)
    p.add_argument("--format", nargs="+", choices=FORMAT_NAMES, help="one or more formats (default: all)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="figures of a run's law (PNG and PDF)")
    _common(p)
    p.add_argument("--image-format", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"])
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="report.md and a self-contained report.html for a run")
    _common(p)
    p.set_defaults(func=cmd_report)


# --- kepler fit --from law.json ---------------------------------------------------------------------
def _write_predictions(path: Path, record, splits: dict) -> None:
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "row", "group", *[f"pred_{t}" for t in record.targets]])
        for name, data in splits.items():
            pred = record.predict(data)
            for i in range(len(data)):
                w.writerow([name, int(data.rows[i]), data.groups[i], *[repr(float(v)) for v in pred[i]]])


def fit_from_json(args: argparse.Namespace) -> int:
    """Score a law.json's constants as they are (no refit), or refit its formula with --refit."""
    from discovery.data import load_frame
    from discovery.export.json_law import read, record_from_json, source_mismatches
    from evaluators.metrics import score
    from evaluators.protocol import Protocol

    data = read(Path(args.from_json))
    if args.task and args.task != data["task"]:
        raise ValueError(f"{args.from_json} is a law for task {data['task']!r}, not {args.task!r}")
    for name in source_mismatches(data):
        err_console.print(f"[yellow]warning:[/] data source {name} has a different sha256 now than when the law was fitted")
    if args.refit:
        from discovery.cli import cmd_fit

        fit = data.get("fit") or {}
        args.task, args.formula, args.from_json = data["task"], data["formula"], None
        if not args.loss and (fit.get("loss", "linear") != "linear" or fit.get("log_residuals")):
            args.loss = fit.get("loss", "linear")
            args.f_scale, args.log_residuals = fit.get("f_scale", 1.0), fit.get("log_residuals", False)
        return cmd_fit(args)
    record = record_from_json(data, source=args.from_json)
    protocol = Protocol(record.task, load_frame(record.task))
    test = protocol.final_test(purpose="kepler fit --from: score a saved law")
    splits = {"train": protocol.train, "validation": protocol.validation, "test": test}
    scores = {name: {**score(d.Y, record.predict(d)).as_dict(), "rows": len(d)} for name, d in splits.items()}
    recorded = (data.get("metrics") or {}).get("test", {}).get("r2")
    result = {"task": record.task.name, "formula": record.law.text, "canonical": record.law.canonical,
              "hash": record.law.hash, "constants_from": str(args.from_json), "refit": False,
              "constants": {f"{g}|{record.targets[t]}": dict(zip(record.law.constant_names, map(float, v)))
                            for (g, t), v in sorted(record.constants.items())},
              "scores": scores, "recorded_test_r2": recorded,
              "reproduced": recorded is not None and scores["test"]["r2"] == recorded}
    if args.predictions:
        _write_predictions(Path(args.predictions), record, splits)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    console.print(f"[bold]{record.task.name}[/]: {record.law.text} with the constants of {args.from_json} (no refit)")
    table = Table(title="Scores with the saved constants (fitted on all of train)")
    for col in ("split", "rows", "R²", "NMSE", "NMAE"):
        table.add_column(col)
    for name, s in scores.items():
        table.add_row(name, str(s["rows"]), f"{s['r2']:.6f}", f"{s['nmse']:.4g}", f"{s['nmae']:.4g}")
    console.print(table)
    if recorded is not None:
        same = "reproduced exactly" if result["reproduced"] else f"differs from the recorded {recorded!r}"
        console.print(f"test R² {scores['test']['r2']!r}: {same}")
    if args.predictions:
        console.print(f"predictions written to {args.predictions}")
    return 0


# --- kepler bench --runs DIR ------------------------------------------------------------------------
def bench_with_runs(args: argparse.Namespace, rows: list, paths: list[Path]) -> int:
    """Extend the human-law bench with the best discovered law of every finished run under --runs."""
    from evaluators.benchmark import leaderboard, write_leaderboard

    board = leaderboard(rows, Path(args.runs))
    paths = [*paths, *write_leaderboard(board, Path(args.out))]
    if args.json:
        print(json.dumps([r.as_dict() for r in board], indent=2))
        return 0
    table = Table(title=f"Leaderboard: human vs discovered laws on the test split (runs under {args.runs})")
    for col in ("task", "entry", "law", "constants", "complexity", "R² val", "R² test", "NMSE", "NMAE"):
        table.add_column(col, overflow="fold")
    num = lambda x, d=4: "–" if x is None else f"{x:.{d}f}"  # noqa: E731
    for r in board:
        table.add_row(r.task, r.entry, r.law, str(r.n_constants), str(r.complexity), num(r.validation_r2),
                      num(r.r2), num(r.nmse), num(r.nmae))
    console.print(table)
    console.print(f"written: {', '.join(str(p) for p in paths)}")
    return 0
