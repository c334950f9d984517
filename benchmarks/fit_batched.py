"""Another fitter (batched, or MINPACK's lm with --fitter lm) against trf: search throughput and fit quality, side
by side in one run.

1. Throughput: per task, one campaign per fitter (fast engine, same seed, same generation budget, no
   clock stop), each in its own process, taking turns going first (benchmarks/search_throughput.py
   --compare fitter or minpack): candidates evaluated per CPU second of the search, and the ratio.
2. Quality: the first `--candidates` laws the trf campaign evaluated on each task (real candidates), fitted
   in this process with both fitters and the campaign's search options, for each of the campaign's
   recipes: per group, (other objective - trf objective) / trf objective, and per (law, recipe) the
   same for the validation NMSE; counted as better / equal within 1e-6 / worse, with the worst cases.
   The fits' CPU seconds are summed per fitter too (the fit alone, without the rest of a campaign).

    KEPLER_DATA_DIR=/work/shared/datasets python benchmarks/fit_batched.py [task ...] [--generations 3]
        [--seed 0] [--workers 1] [--candidates 40] [--fitter batched|lm] [--json out.json] [--markdown out.md]
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as the campaign's pool workers
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sqlite3  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_throughput  # noqa: E402

TASKS = ["sft_scaling_law", "openclip_cherti2023", "vocab_scaling_law", "data_constrained_scaling_law",
         "lr_bsz_scaling_law"]
FITTERS = ("trf", "batched")  # the baseline and the one measured against it (--fitter)
EQUAL = 1e-6


def _rel(new: float, old: float) -> float:
    if old == new:
        return 0.0
    return (new - old) / max(abs(old), 1e-300)


def _classes(rel: list[float]) -> dict:
    a = np.array(rel, dtype=float)
    return {"n": len(a), "better": int((a < -EQUAL).sum()), "equal": int((np.abs(a) <= EQUAL).sum()),
            "worse": int((a > EQUAL).sum()), "worst": float(a.max()) if len(a) else 0.0,
            "median": float(np.median(a)) if len(a) else 0.0}


def quality(task_name: str, store_path: Path, n_candidates: int, seed: int, fitters: tuple[str, str] = FITTERS) -> dict:
    """Both fitters on the first evaluated candidates of the trf run, with the campaign's search options."""
    from discovery.laws.cache import parse_cached
    from discovery.laws.fit import RECIPES, fit_law, recipe_options
    from discovery.search.campaign import Campaign, CampaignSettings
    from discovery.search.executors import stored_specs
    from discovery.tasks.data import load_frame
    from discovery.tasks.spec import load_task
    from evaluators.protocol import Protocol

    task = load_task(task_name)
    protocol = Protocol(task, load_frame(task))
    settings = CampaignSettings(task=task_name, seed=seed)
    opts = Campaign.search_fit_options(settings)
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    rows = db.execute("SELECT formula, constant_specs FROM candidates WHERE status = 'evaluated' ORDER BY id "
                      "LIMIT ?", (n_candidates,)).fetchall()
    positive = bool((protocol.fit_part.Y > 0).all())
    obj_rel, nmse_rel, worst, cpu = [], [], [], dict.fromkeys(fitters, 0.0)
    only = {"trf_only_ok": 0, "other_only_ok": 0, "both_failed": 0}
    for row in rows:
        law = parse_cached(row["formula"], task.symbols, check_typos=False)
        specs = stored_specs(row["constant_specs"])
        for recipe in settings.fit_recipes:
            if RECIPES[recipe].get("log_residuals") and not positive:
                continue
            fits = {}
            for fitter in fitters:
                o = replace(recipe_options(opts, recipe), fitter=fitter)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.process_time()
                    fits[fitter] = fit_law(law, protocol.fit_part, task.targets, specs, o,
                                           total_time_limit=settings.fit_time_limit)
                    cpu[fitter] += time.process_time() - t0
            a, b = (fits[f] for f in fitters)
            for key, fa in a.fits.items():
                fb = b.fits[key]
                if fa.ok and fb.ok:
                    r = _rel(fb.objective, fa.objective)
                    obj_rel.append(r)
                    worst.append((r, row["formula"], recipe, key[0], fa.objective, fb.objective))
                else:
                    only["trf_only_ok" if fa.ok else "other_only_ok" if fb.ok else "both_failed"] += 1
            va, vb = (protocol.validation_score(f.predict(protocol.validation)).nmse for f in (a, b))
            if np.isfinite(va) and np.isfinite(vb):
                nmse_rel.append(_rel(vb, va))
    worst.sort(key=lambda w: -w[0])
    return {"task": task_name, "laws": len(rows), "objective": _classes(obj_rel), "val_nmse": _classes(nmse_rel),
            "failures": only, "fit_cpu": cpu, "fit_cpu_ratio": cpu["trf"] / max(cpu[fitters[1]], 1e-9),
            "worst": [{"rel": w[0], "formula": w[1], "recipe": w[2], "group": w[3], "trf": w[4], "other": w[5]}
                      for w in worst[:3]]}


def markdown(comparison: list[dict], rows: list[dict], quality_rows: list[dict], args) -> str:
    other = args.fitter
    lines = [search_throughput.markdown(rows, comparison, args, ("trf", other))]  # the throughput tables
    lines += ["", f"Fit quality, first {args.candidates} evaluated laws of the trf run, every recipe "
              f"(relative difference {other} vs trf; equal = within 1e-6):", "",
              f"| task | laws | fit CPU trf/{other} | group objectives: better / equal / worse (worst) | "
              f"val NMSE: better / equal / worse (worst) | failed in one only (trf ok / {other} ok) |",
              "|---|---|---|---|---|---|"]
    for q in quality_rows:
        o, v, f = q["objective"], q["val_nmse"], q["failures"]
        lines.append(f"| {q['task']} | {q['laws']} | {q['fit_cpu_ratio']:.2f}x | {o['better']} / {o['equal']} / "
                     f"{o['worse']} ({o['worst']:+.2e}) | {v['better']} / {v['equal']} / {v['worse']} "
                     f"({v['worst']:+.2e}) | {f['trf_only_ok']} / {f['other_only_ok']} |")
    lines += ["", f"Worst group objectives ({other} vs trf):", ""]
    for q in quality_rows:
        for w in q["worst"]:
            if w["rel"] > EQUAL:
                lines.append(f"- {q['task']} `{w['formula']}` ({w['recipe']}, group {w['group']}): "
                             f"{w['rel']:+.3e} ({w['trf']:.6g} -> {w['other']:.6g})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="*")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--candidates", type=int, default=40)
    ap.add_argument("--fitter", choices=["batched", "lm"], default="batched", help="the fitter measured against trf")
    ap.add_argument("--out", help="where the runs go (default: a temporary directory)")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    args.compare = "fitter"  # search_throughput's tables name the variants by what is compared
    fitters = ("trf", args.fitter)
    base = Path(args.out or tempfile.mkdtemp(prefix="kepler-fit-batched-"))
    tasks = args.tasks or TASKS
    rows = search_throughput.run_all(tasks, fitters, base, args)
    comparison = search_throughput.compare(rows, fitters)
    quality_rows = []
    for task in tasks:
        q = quality(task, base / f"{task}-trf" / "campaign.sqlite", args.candidates, args.seed, fitters)
        quality_rows.append(q)
        print(f"{task:32s} quality: objectives {q['objective']}  val NMSE {q['val_nmse']}  {q['failures']}  "
              f"fit CPU ratio {q['fit_cpu_ratio']:.2f}x", flush=True)
    text = markdown(comparison, rows, quality_rows, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "comparison": comparison, "quality": quality_rows},
                                              indent=2))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
