"""Kepler's test R² beside its SLDBench export's, under SLDBench's protocol, for finished runs.

    python benchmarks/sldbench_export.py RUN_DIR [RUN_DIR ...]     # or a folder holding runs

For every run: the best law's test R² as Kepler reports it (constants fitted on all of train by Kepler),
and the R² of the exported SLDBench program, whose `fit_scaling_law` fits every group's train rows itself
(Kepler's algorithm, starting from Kepler's constants) before `scaling_law_func` predicts its test rows.
The runs for the issue-15 note were made with `kepler discover TASK --generations 10` on the eight SLDBench
tasks.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discovery.outputs.export import export  # noqa: E402
from discovery.outputs.record import record_from_run  # noqa: E402
from evaluators.sldbench import load_program, run_protocol  # noqa: E402


def compare(run_dir: Path, out: Path) -> dict:
    record = record_from_run(run_dir)
    protocol = record.extra["protocol"]
    program = load_program(export(record, ["sldbench"], out / record.task.name)[0])
    got = run_protocol(program, protocol.train, protocol.final_test(purpose="benchmark: SLDBench export vs Kepler"))
    kepler = record.metrics["test"]["r2"]
    return {"task": record.task.name, "run": str(run_dir), "formula": record.law.text, "kepler_test_r2": kepler,
            "program_test_r2": got["r2"], "difference": got["r2"] - kepler, "program_fit_seconds": got["fit_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dirs = sorted({p.parent for r in args.runs for p in r.rglob("best.json")})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in dirs:
            rows.append(compare(d, Path(tmp)))
            r = rows[-1]
            if not args.json:
                print(f"{r['task']:30s} Kepler {r['kepler_test_r2']:9.4f}   program {r['program_test_r2']:9.4f}   "
                      f"diff {r['difference']:+.4f}   fits {r['program_fit_seconds']:.1f}s   {r['formula']}",
                      flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
