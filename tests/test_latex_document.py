"""A paper's worth of Kepler's LaTeX: three laws (\\input, as a user would) and the booktabs leaderboard in
one article. Compiled with pdflatex when it is installed (no overfull box, no duplicate label, no
undefined reference); the structure is checked either way."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from discovery.laws.fit import FitOptions, fit_law
from discovery.laws.uncertainty import BootstrapOptions
from discovery.outputs.derive import derive
from discovery.outputs.export import latex
from discovery.outputs.export.leaderboard import render as render_leaderboard
from discovery.outputs.record import attach, record_from_law
from discovery.tasks.data import load_frame
from discovery.tasks.spec import load_task
from evaluators.benchmark import bench_task, leaderboard, parse_human_law
from evaluators.protocol import Protocol


def _human(name: str, which: int = 0, starts: int = 16, resamples: int = 20):
    task = load_task(name)
    human = [h for h in task.human_laws if h.constants][which]
    law = parse_human_law(task, human)
    protocol = Protocol(task, load_frame(task))
    opts = FitOptions.from_settings(human.fit, n_starts=starts, n_refine=1, polish=False, max_nfev=100)
    record = record_from_law(task, law, fit_law(law, protocol.train, task.targets, human.constants, opts),
                             human.constants, opts, protocol, label=human.name)
    boot = None
    if resamples:
        boot = attach(record, protocol, BootstrapOptions(n_resamples=resamples, n_jobs=1), cache=False)
    record.extra["derived"] = derive(record, protocol.train, boot)
    return record


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> Path:
    """law_*.tex for chinchilla (a law in N and D, with intervals), sft (42 groups: a table over pages, split by
    columns) and lr_bsz (12 constants, an equation over several lines), leaderboard.tex over two seeds, and
    doc.tex. The fits are cheap: the constants only have to be printed."""
    out = tmp_path_factory.mktemp("paper")
    records = [_human("chinchilla_approach3", 1), _human("sft_scaling_law", starts=2, resamples=0),
               _human("lr_bsz_scaling_law", starts=2, resamples=0)]
    for r in records:
        (out / f"law_{r.task.name}.tex").write_text(latex.render(r))
    runs = out / "runs"
    for seed, r2 in ((0, 0.91), (1, 0.87)):  # two finished runs of one proposer, as the campaign writes them
        best = {"r2": r2, "nmse": 1 - r2, "nmae": 0.3}
        (runs / f"s{seed}").mkdir(parents=True)
        (runs / f"s{seed}" / "best.json").write_text(json.dumps({
            "task": "parallel_scaling_law", "proposer": "offline", "seed": seed,
            "best": {"id": 3 + seed, "formula": "A*N**a*P**b + E", "n_constants": 4, "complexity": 12,
                     "validation": {"r2": r2 - 0.1}, "test": best}}))
    task = load_task("parallel_scaling_law")
    board = leaderboard(bench_task(task), runs)
    (out / "leaderboard.tex").write_text(render_leaderboard(board, {task.name: task.title}))
    inputs = "\n".join(rf"\input{{law_{r.task.name}.tex}}" for r in records)
    (out / "doc.tex").write_text(f"\\documentclass{{article}}\n\\usepackage{{{latex.PACKAGES}}}\n\\begin{{document}}\n"
                                 f"{inputs}\n\\input{{leaderboard.tex}}\n\\end{{document}}\n")
    return out


def _all_tex(document: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(document.glob("*.tex")) if p.name != "doc.tex")


def test_labels_are_unique_and_scale_factors_are_powers_of_ten(document):
    tex = _all_tex(document)
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    assert len(labels) == len(set(labels)) >= 10, labels
    refs = set(re.findall(r"\\eqref\{([^}]*)\}", tex))
    assert refs <= set(labels)
    lr = (document / "law_lr_bsz_scaling_law.tex").read_text()
    assert r"\frac{D}{10^{10}}" in lr and r"\frac{N}{10^{8}}" in lr and "10000000000" not in lr
    assert r"\begin{split}" in lr  # 12 constants do not fit on one line
    chin = (document / "law_chinchilla_approach3.tex").read_text()
    rows = re.findall(r"^(\$[^$]+\$) & (amplitude|exponent|offset)", chin, re.M)
    assert [r[0] for r in rows] == ["$A$", "$B$", r"$\alpha$", r"$\beta$", "$E$"]  # by role, then by name
    assert "Compute-optimal allocation" in chin
    assert r"\begin{longtable}" in (document / "law_sft_scaling_law.tex").read_text()
    board = (document / "leaderboard.tex").read_text()
    assert r"\toprule" in board and "mean $\\pm$ sd over 2 seeds" in board and "fitted by Kepler" in board


def test_labels_come_from_the_run_and_the_candidate(document):
    record = _human("chinchilla_approach3", 1)
    a, b = copy.copy(record), copy.copy(record)
    a.run_dir, a.candidate_id = Path("results/chinchilla_approach3/offline-seed0"), 12
    b.run_dir, b.candidate_id = Path("results/chinchilla_approach3/offline-seed1"), 12
    assert latex.law_label(a) == "kepler:chinchilla-approach3:offline-seed0:c12"
    assert len({latex.law_label(x) for x in (a, b, record)}) == 3


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (Debian: apt-get install texlive-latex-recommended)")
def test_the_document_compiles_without_overfull_boxes_or_duplicate_labels(document):
    for _ in range(2):  # the second pass resolves references
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=document,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-3000:]
    log = (document / "doc.log").read_text(errors="replace")
    for problem in ("Overfull \\hbox", "multiply defined", "undefined references", "Float too large"):
        assert problem not in log, re.findall(rf".*{re.escape(problem)}.*", log)[:3]
