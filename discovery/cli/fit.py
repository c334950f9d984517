"""`kepler fit`: fit one formula to a task and score it; `--from law.json` scores an exported law as saved."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from discovery.cli.console import make_console, num
from discovery.cli.owndata import add_options as add_owndata_options
from discovery.tasks.spec import load_task

console = make_console()
err_console = make_console(stderr=True)


def cmd_fit(args: argparse.Namespace) -> int:
    from discovery.laws import guard
    from discovery.laws.fit import FitOptions, fit_law
    from discovery.tasks.data import load_frame
    from evaluators.benchmark import human_law_for, parse_formula, usable_human_laws
    from evaluators.metrics import score
    from evaluators.protocol import Protocol

    if getattr(args, "from_json", None):
        return fit_from_json(args)
    if getattr(args, "csv", None):
        from discovery.cli.owndata import task_from_csv, task_name

        if args.formula is None:  # `kepler fit --csv runs.csv ... FORMULA`: the one positional is the formula
            args.task, args.formula = None, args.task
        if args.formula is None:
            raise ValueError("give the formula to fit")
        args.task = task_from_csv(args, Path("results") / task_name(args))
    if not args.task or not args.formula:
        raise ValueError("give a task and a formula, or --from law.json")
    guard.prestart()  # the formula is checked within the time bound by a helper process: start it while data loads
    task = load_task(args.task)
    frame = load_frame(task)
    declared = [c.strip() for c in args.constants.split(",") if c.strip()] if args.constants else None
    hints = {**{str(c): "" for c in frame.columns if c not in ("group", "split")}, **task.symbol_for_column()}
    for broken in usable_human_laws(task)[1]:  # a broken human law of the task file: said, and left out
        err_console.print(f"[yellow]warning:[/] {escape(broken)}", soft_wrap=True)
    law = parse_formula(task, args.formula, declared, hints)
    specs, human = human_law_for(task, law)
    settings = human.fit if human else None
    opts = FitOptions(seed=args.seed, n_starts=args.starts)
    if settings is not None:
        opts = FitOptions.from_settings(settings, seed=args.seed, n_starts=args.starts)
    if args.loss:
        opts = FitOptions(**{**opts.__dict__, "loss": args.loss, "f_scale": args.f_scale,
                             "log_residuals": args.log_residuals})
    if args.time_limit is not None:
        opts = dataclasses.replace(opts, time_limit=args.time_limit)
    protocol = Protocol(task, frame)
    val_fit = fit_law(law, protocol.fit_part, task.targets, specs, opts)
    val_scores = protocol.validation_score(val_fit.predict(protocol.validation))
    full_fit = fit_law(law, protocol.train, task.targets, specs, opts)
    test = protocol.final_test(purpose="kepler fit: report a user's formula")
    test_scores = score(test.Y, full_fit.predict(test))

    groups = protocol.train.group_names
    result = {
        "task": task.name, "formula": law.text, "canonical": law.canonical, "hash": law.hash,
        "complexity": law.complexity, "constant_names": sorted(law.constant_names),
        "constants": {f"{g}/{task.targets[t]}" if len(task.targets) > 1 else g: full_fit.constants(g, t)
                      for g in groups for t in range(len(task.targets))},
        "failures": full_fit.failures,
        "validation": {**val_scores.as_dict(), "fitted_on": "fit part of train", "rows": len(protocol.validation)},
        "test": {**test_scores.as_dict(), "fitted_on": "all of train", "rows": len(test)},
        "fit_options": opts.__dict__,
    }
    if args.json:
        print(json.dumps(result, indent=2, default=float))
        return _exit_code(val_fit, full_fit)
    console.print(f"[bold]{task.name}[/]: {law.text}   (canonical {law.canonical}, {len(law.constants)} constants)")
    console.print(f"variables: {', '.join(task.symbols)}; treated as constants (fitted per group): "
                  f"{', '.join(sorted(law.constant_names))}")
    if human:
        console.print(f"Recognised as human law [italic]{human.name}[/]: "
                      "using its initial values, bounds and fit settings.")
    ctable = Table(title="Constants fitted on all of train, per group")
    ctable.add_column("group")
    for c in law.constant_names:
        ctable.add_column(c, justify="right")
    for key, consts in list(result["constants"].items())[: args.max_groups]:
        ctable.add_row(key, *[num(v) for v in consts.values()])
    console.print(ctable)
    if len(result["constants"]) > args.max_groups:
        console.print(f"… {len(result['constants']) - args.max_groups} more groups (use --json for all)")
    for failure in full_fit.failures[:5]:
        err_console.print(f"[red]fit failed[/] {failure}")
    mtable = Table(title="Scores (SLDBench definitions)")
    for col in ("split", "rows", "fitted on", "R²", "NMSE", "NMAE"):
        mtable.add_column(col)
    mtable.add_row("validation (held-out slice of train)", str(len(protocol.validation)), "fit part of train",
                   num(val_scores.r2), num(val_scores.nmse), num(val_scores.nmae))
    mtable.add_row("test", str(len(test)), "all of train", num(test_scores.r2), num(test_scores.nmse),
                   num(test_scores.nmae))
    console.print(mtable)
    return _exit_code(val_fit, full_fit)


def _exit_code(val_fit, full_fit) -> int:
    """1 when a group's fit failed (its scores are partial), said in one line on stderr; 0 otherwise. A script
    that checks the exit status must not read a failed fit as a success."""
    failed = {key for fit in (val_fit, full_fit) for key, f in fit.fits.items() if not f.ok}
    if not failed:
        return 0
    err_console.print(f"[red]error:[/] the fit failed for {len(failed)} of {len(full_fit.fits)} group fits: "
                      "the scores above leave them out", soft_wrap=True)
    return 1


def _write_predictions(path: Path, record, splits: dict) -> None:
    """Every row of every split: its inputs (the task's columns), observed and predicted targets, and its split."""
    task = record.task
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "row", "group", *task.columns, *[f"observed_{t}" for t in record.targets],
                    *[f"pred_{t}" for t in record.targets]])
        for name, data in splits.items():
            pred = record.predict(data)
            for i in range(len(data)):
                w.writerow([name, int(data.rows[i]), data.groups[i], *[repr(float(v)) for v in data.X[i]],
                            *[repr(float(v)) for v in data.Y[i]], *[repr(float(v)) for v in pred[i]]])


def fit_from_json(args: argparse.Namespace) -> int:
    """Score a law.json's constants as they are (no refit), or refit its formula with --refit."""
    from discovery.outputs.export.json_law import read, record_from_json, source_mismatches
    from discovery.tasks.data import load_frame
    from evaluators.metrics import score
    from evaluators.protocol import Protocol

    data = read(Path(args.from_json))
    if args.task and args.task != data["task"]:
        raise ValueError(f"{args.from_json} is a law for task {data['task']!r}, not {args.task!r}")
    for name in source_mismatches(data):
        err_console.print(f"[yellow]warning:[/] data source {name} has a different sha256 now "
                          "than when the law was fitted")
    if args.refit:
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
              "constants": {f"{g}|{record.targets[t]}": dict(zip(record.law.constant_names, map(float, v), strict=True))
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


def add_commands(sub) -> None:
    """Register `fit` on the main parser's subparsers."""
    p = sub.add_parser("fit", help="fit a formula to a task and score it on validation and test")
    p.add_argument("task", nargs="?")
    p.add_argument("formula", nargs="?")
    p.add_argument("--from", dest="from_json", metavar="LAW_JSON", help="score a `kepler export` law.json as saved")
    p.add_argument("--refit", action="store_true", help="with --from: refit the formula instead of using its constants")
    p.add_argument("--predictions", metavar="CSV", help="with --from: write every row's prediction to this file")
    p.add_argument("--constants", metavar="NAMES", help="the formula's constants, comma-separated (default: every "
                   "name that is not a variable, unless it looks like a typo of one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--starts", type=int, default=128, help="quasi-random starts screened per fit")
    p.add_argument("--loss", choices=["linear", "huber", "soft_l1", "cauchy"])
    p.add_argument("--f-scale", type=float, default=1.0)
    p.add_argument("--log-residuals", action="store_true")
    p.add_argument("--time-limit", type=float, dest="time_limit",
                   help="CPU seconds per group fit (default 10; a very large CSV may need more)")
    p.add_argument("--max-groups", type=int, default=20)
    p.add_argument("--json", action="store_true")
    add_owndata_options(p)
    p.set_defaults(func=cmd_fit)
