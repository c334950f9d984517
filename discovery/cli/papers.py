"""`kepler export | plot | report`: a finished run's law as paper exports, figures and a report."""
from __future__ import annotations

import argparse
from pathlib import Path

from discovery.cli.console import make_console

console = make_console()
err_console = make_console(stderr=True)
# The keys of discovery.export.FORMATS, listed here so `kepler --help` does not import SymPy (a test checks).
FORMAT_NAMES = ("latex", "markdown", "json", "python", "sldbench", "bibtex")


def bootstrap_progress():
    """A rich progress bar for the bootstrap (on stderr, so `--json` output stays clean)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True)


def attach_with_progress(record, protocol, args: argparse.Namespace, what: str = ""):
    """The record's bootstrap: from the run's cache, or computed with a progress bar (and then cached)."""
    from discovery.laws.uncertainty import BootstrapOptions
    from discovery.outputs.record import attach

    options = BootstrapOptions(n_resamples=args.bootstrap, seed=record.seed if args.seed is None else args.seed,
                               n_jobs=args.jobs)
    with bootstrap_progress() as bar:
        task = bar.add_task(f"bootstrap{what}: {args.bootstrap} resamples of {len(protocol.train)} train rows "
                            "(resamples x groups refit)", total=None)
        boot = attach(record, protocol, options, cache=not args.no_cache,
                      progress=lambda done, total: bar.update(task, completed=done, total=total))
    if record.extra.get("bootstrap_cached"):
        err_console.print(f"bootstrap{what}: {args.bootstrap} resamples from the run's cache")
    return boot


def _record(args: argparse.Namespace):
    """The chosen law of a run, with its bootstrap attached unless --bootstrap 0."""
    from discovery.outputs.record import record_from_run

    record = record_from_run(Path(args.run_dir), args.candidate)
    protocol = record.extra["protocol"]
    boot = attach_with_progress(record, protocol, args) if args.bootstrap > 0 else None
    return record, protocol, boot


def _human(record, protocol, args: argparse.Namespace):
    """The human law drawn beside the discovered one (Kepler's fit on train), or None."""
    from discovery.outputs.human import human_records, overlay_choice
    from discovery.outputs.record import cache_dir

    if getattr(args, "no_human", False):
        return None
    humans = human_records(record.task, protocol, record.seed, None if args.no_cache else cache_dir(record))
    return overlay_choice(humans, Path(args.run_dir))


def _derived(record, protocol, boot) -> None:
    """Derived quantities (allocation, predictions) of the record's law, kept for the exports."""
    from discovery.outputs.derive import derive

    record.extra["derived"] = derive(record, protocol.train, boot)


def _coverage_note(record) -> None:
    u = record.uncertainty
    if u and u.get("coverage"):
        c = u["coverage"]
        when = " (the run's cache)" if record.extra.get("bootstrap_cached") else ""
        console.print(f"bootstrap: {u['resamples']} resamples in {u['seconds']:.1f}s{when}; test coverage of the "
                      f"{int(u['level'] * 100)}% prediction band {c['prediction_band']:.1%} "
                      f"(law band {c['law_band']:.1%}) over {c['cells']} test targets")


def cmd_export(args: argparse.Namespace) -> int:
    from discovery.outputs.export import FORMATS, export

    formats = args.format or list(FORMATS)
    record, protocol, boot = _record(args)
    _derived(record, protocol, boot)
    paths = export(record, formats, Path(args.out) if args.out else Path(args.run_dir) / "export")
    console.print(f"[bold]{record.task.name}[/] law {record.label} ({record.role}): {record.law.text}")
    _coverage_note(record)
    for p in paths:
        console.print(f"written: {p}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from discovery.outputs.plots import plot_all, splits_of

    record, protocol, boot = _record(args)
    out = Path(args.out) if args.out else Path(args.run_dir) / "figures"
    written = plot_all(record, splits_of(protocol, "kepler plot: mark test points"), out, boot,
                       run_dir=Path(args.run_dir), formats=tuple(args.image_format),
                       human=_human(record, protocol, args), only=args.only)
    for paths in written.values():
        for p in paths:
            console.print(f"written: {p}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from discovery.outputs.plots import plot_all, splits_of
    from discovery.outputs.report import write_report

    record, protocol, boot = _record(args)
    _derived(record, protocol, boot)
    out = Path(args.out) if args.out else Path(args.run_dir)
    written = plot_all(record, splits_of(protocol, "kepler report: figures"), out / "figures", boot,
                       run_dir=Path(args.run_dir), formats=tuple(dict.fromkeys(["png", *args.image_format])),
                       human=_human(record, protocol, args))
    pngs = {name: next(p for p in paths if p.suffix == ".png") for name, paths in written.items()}
    for p in write_report(record, Path(args.run_dir), out, pngs, protocol):
        console.print(f"written: {p}")
    _coverage_note(record)
    return 0


def common_arguments(p: argparse.ArgumentParser) -> None:
    """The run, candidate, output and bootstrap arguments every paper command takes."""
    p.add_argument("run_dir", help="a finished run directory (holds best.json and campaign.sqlite)")
    p.add_argument("--candidate", type=int, help="candidate id (default: the run's best law)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, help="bootstrap seed (default: the run's seed)")
    p.add_argument("--jobs", type=int, help="processes for the bootstrap (default: one per core for large jobs)")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the bootstrap and human-law fits instead of reusing RUN_DIR/cache")


def add_commands(sub) -> None:
    """Register `export`, `plot` and `report` on the main parser's subparsers."""
    p = sub.add_parser("export", help="write a run's law as LaTeX, Markdown, JSON, Python, SLDBench or BibTeX")
    common_arguments(p)
    p.add_argument("--format", nargs="+", choices=FORMAT_NAMES, help="one or more formats (default: all)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="figures of a run's law (PNG and PDF)")
    common_arguments(p)
    p.add_argument("--no-human", action="store_true", help="do not draw the human law beside the discovered one")
    p.add_argument("--image-format", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"])
    p.add_argument("--only", nargs="+", metavar="FIGURE", help="only these figures (e.g. isoflop curves_N)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="report.md and a self-contained report.html for a run")
    common_arguments(p)
    p.add_argument("--image-format", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                   help="figure files written beside the report (PNG is always written: the report embeds it)")
    p.add_argument("--no-human", action="store_true", help="do not draw the human law beside the discovered one")
    p.set_defaults(func=cmd_report)
