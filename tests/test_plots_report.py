"""Figures (Agg, PNG and PDF), the self-contained report, and the human-vs-discovered leaderboard."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import matplotlib
import pytest

from discovery.cli import main
from discovery.laws.fit import FitOptions, fit_law
from discovery.laws.uncertainty import BootstrapOptions
from discovery.outputs.plots import plot_all, splits_of
from discovery.outputs.record import attach, record_from_law
from discovery.search.campaign import Campaign, CampaignSettings
from discovery.tasks.data import load_frame
from discovery.tasks.spec import load_task
from evaluators.benchmark import parse_human_law
from evaluators.protocol import Protocol

SMALL = dict(generations=2, population=6, islands=1, children=6, fit_starts=16, executor="serial")
matplotlib.use("Agg")  # the smoke tests render headless; discovery.outputs.plots itself never touches pyplot
FIGURES = ["observed_vs_predicted", "curves", "residuals", "pareto", "history"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, datasets_dir) -> Path:
    """A folder with one small finished campaign on parallel_scaling_law."""
    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("KEPLER_DATA_DIR"):
            mp.setenv("KEPLER_DATA_DIR", str(datasets_dir))
        Campaign(CampaignSettings(task="parallel_scaling_law", seed=1, out=str(root / "par"), **SMALL)).run()
    return root


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_command_writes_every_figure_as_png_and_pdf(runs, tmp_path):
    out = tmp_path / "figs"
    assert main(["plot", str(runs / "par"), "--bootstrap", "40", "--jobs", "1", "--out", str(out)]) == 0
    for name in FIGURES:
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        assert png.stat().st_size > 10_000 and _is_png(png), name
        assert pdf.stat().st_size > 2_000 and pdf.read_bytes()[:5] == b"%PDF-", name


def test_figures_render_with_agg_for_several_targets_without_a_run(tmp_path):
    """A law fitted outside any run (three targets, one group): the three law figures, no Pareto/history."""
    task = load_task("observational_ruan2024")
    human = next(h for h in task.human_laws if h.constants)
    law = parse_human_law(task, human)
    protocol = Protocol(task, load_frame(task))
    opts = FitOptions.from_settings(human.fit, n_starts=32)
    fit = fit_law(law, protocol.train, task.targets, human.constants, opts)
    record = record_from_law(task, law, fit, human.constants, opts, protocol, label=human.name)
    boot = attach(record, protocol, BootstrapOptions(n_resamples=30, n_jobs=1))
    written = plot_all(record, splits_of(protocol, "test_plots_report"), tmp_path, boot, formats=("png",))
    assert sorted(written) == ["curves", "observed_vs_predicted", "residuals"]
    assert all(_is_png(p) and p.stat().st_size > 10_000 for paths in written.values() for p in paths)
    assert matplotlib.get_backend().lower() == "agg"


def test_report_is_self_contained(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs / "par"), "--bootstrap", "40", "--jobs", "1", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for section in ["## Task", "## Data provenance", "## Settings", "## Leaderboard", "## Best law",
                    "## Figures", "## LLM usage and cost"]:
        assert section in md, section
    task = load_task("parallel_scaling_law")
    assert task.sources[0].sha256 in md and "coverage" in md and "human" in md
    for name in FIGURES:
        assert f"figures/{name}.png" in md and (out / "figures" / f"{name}.png").is_file()
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing loaded from elsewhere
    assert page.count("data:image/png;base64,") >= len(FIGURES) + 1  # figures and the equation
    assert page.count("<table>") == page.count("</table>") >= 5


def test_bench_with_runs_adds_discovered_laws_to_the_human_leaderboard(runs, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "parallel_scaling_law", "--runs", str(runs), "--out", str(out), "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    entries = [r["entry"] for r in board if r["task"] == "parallel_scaling_law"]
    assert entries == ["human (published)", "human (Kepler fit)", "discovered"]
    best = json.loads((runs / "par" / "best.json").read_text())["best"]
    found = next(r for r in board if r["entry"] == "discovered")
    assert found["r2"] == best["test"]["r2"] and found["n_constants"] == best["n_constants"]
    assert found["complexity"] == best["complexity"] and found["validation_r2"] == best["validation"]["r2"]
    published = next(r for r in board if r["entry"] == "human (published)")
    assert published["r2"] == 1.0 and published["nmse"] is None  # SLDBench's table gives R² only
    for name in ["leaderboard.md", "leaderboard.csv", "leaderboard.json", "bench.md"]:
        assert (out / name).is_file()
    with (out / "leaderboard.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(board)
    assert "| discovered |" in (out / "leaderboard.md").read_text()
