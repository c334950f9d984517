"""Figures (Agg, PNG and PDF), the self-contained report, and the human-vs-discovered leaderboard."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
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
FIGURES = ["observed_vs_predicted", "curves_N", "curves_P", "residuals", "pareto", "history"]


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


def _fonts_ok(pdf: Path) -> bool:
    """Every font embedded as TrueType (Type 42), none as Type 3 (what journals refuse)."""
    data = pdf.read_bytes()
    return b"/Type3" not in data and b"/FontFile2" in data


def test_plot_command_writes_every_figure_as_png_and_pdf(runs, tmp_path, capsys):
    """Every figure as PNG (and, for two of them, PDF: embedding TrueType subsets costs a second per file)."""
    out = tmp_path / "figs"
    assert main(["plot", str(runs / "par"), "--bootstrap", "40", "--jobs", "1", "--out", str(out),
                 "--image-format", "png"]) == 0
    for name in FIGURES:
        png = out / f"{name}.png"
        assert png.stat().st_size > 10_000 and _is_png(png), name
    assert main(["plot", str(runs / "par"), "--bootstrap", "40", "--jobs", "1", "--out", str(out / "pdf"),
                 "--image-format", "pdf", "--only", "curves_N", "pareto"]) == 0
    for name in ("curves_N", "pareto"):
        pdf = out / "pdf" / f"{name}.pdf"
        assert pdf.stat().st_size > 2_000 and pdf.read_bytes()[:5] == b"%PDF-", name
        assert _fonts_ok(pdf), name
    assert sorted(p.name for p in (out / "pdf").iterdir()) == ["curves_N.pdf", "pareto.pdf"]
    assert not (out / "isoflop.png").exists()  # parallel_scaling_law has no data variable: no isoFLOP figure
    capsys.readouterr()
    # the bootstrap was computed once and kept in the run directory; export and report reuse it
    assert main(["export", str(runs / "par"), "--bootstrap", "40", "--jobs", "1", "--out", str(tmp_path / "x"),
                 "--format", "json"]) == 0
    assert "from the run's cache" in capsys.readouterr().err
    assert len(list((runs / "par" / "cache").glob("bootstrap-*.npz"))) == 1
    exported = json.loads((tmp_path / "x" / "law.json").read_text())
    assert exported["derived"]["allocation"] is None and exported["derived"]["predictions"]


def test_derive_command_predicts_at_user_points_with_bands(runs, tmp_path, capsys):
    out = tmp_path / "derive"
    args = ["derive", str(runs / "par"), "--bootstrap", "40", "--jobs", "1", "--out", str(out)]
    assert main([*args, "--at", "N=1e10,P=8", "--json"]) == 0
    derived = json.loads(capsys.readouterr().out)
    assert [d["law"] for d in derived][1:] == ["parscale"] and derived[0]["law"].startswith("discovered #")
    assert "no model-size and data variables" in derived[0]["allocation_note"]
    user = [p for p in derived[0]["predictions"] if p["at"] == "user point"]
    assert len(user) == len({p["group"] for p in derived[0]["predictions"]}) and user[0]["point"]["N"] == 1e10
    lo, hi = user[0]["prediction_band_95"]
    assert lo < user[0]["value"] < hi
    assert {"derived.json", "derived.md", "derived.tex"} <= {p.name for p in out.iterdir()}
    assert main([*args, "--at", "N=1e10,Q=8"]) == 2
    assert "unknown variable 'Q'" in " ".join(capsys.readouterr().err.split())


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
    assert sorted(written) == ["curves_logC", "observed_vs_predicted", "residuals"]
    assert all(_is_png(p) and p.stat().st_size > 10_000 for paths in written.values() for p in paths)
    assert matplotlib.get_backend().lower() == "agg"


def test_report_is_self_contained(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs / "par"), "--bootstrap", "40", "--jobs", "1", "--out", str(out),
                 "--image-format", "png"]) == 0
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


def test_figures_of_a_law_in_n_and_d_overlay_the_human_law_and_add_an_isoflop_figure(tmp_path):
    """Chinchilla: curves along N and along D with the human law on the same axes, and the isoFLOP figure;
    explanations in legends (no figure title), Type 42 fonts only."""
    from discovery.outputs.labels import group_label
    from discovery.outputs.plots import figures_of, save

    task = load_task("chinchilla_approach3")
    protocol = Protocol(task, load_frame(task))
    fits = []
    for human in task.human_laws:
        law = parse_human_law(task, human)
        opts = FitOptions.from_settings(human.fit, n_starts=16)
        fits.append(record_from_law(task, law, fit_law(law, protocol.train, task.targets, human.constants, opts),
                                    human.constants, opts, protocol, label=human.name))
    record, human = fits
    boot = attach(record, protocol, BootstrapOptions(n_resamples=30, n_jobs=1))
    figures = figures_of(record, splits_of(protocol, "test_plots_report"), boot, human=human)
    assert list(figures) == ["observed_vs_predicted", "curves_N", "curves_D", "isoflop", "residuals"]
    for name in ("curves_N", "isoflop"):
        fig = figures[name]()
        assert fig._suptitle is None and fig.legends
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any(human.label in t for t in labels) and any("test (20)" in t for t in labels)
        assert any("(parameters)" in ax.get_xlabel() for ax in fig.axes)
        pdf = save(fig, tmp_path, name, ("pdf",))[0]
        assert _fonts_ok(pdf)
    assert group_label("('MBZUAI/LaMini-GPT-124M', 'flan')") == "LaMini-GPT-124M, flan"


def test_bench_with_runs_adds_discovered_laws_to_the_human_leaderboard(runs, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "parallel_scaling_law", "--runs", str(runs), "--out", str(out), "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    entries = [r["entry"] for r in board if r["task"] == "parallel_scaling_law"]
    assert entries == ["human (published)", "human (Kepler fit)", "discovered", "discovered (over seeds)",
                       "discovered (best)"]
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


def test_bench_aggregates_runs_over_seeds_and_writes_a_booktabs_leaderboard(runs, tmp_path, capsys):
    """Two runs of one task and proposer that differ only in seed: one row with mean ± sd, min, max of their
    test scores, one with the run best on validation; the LaTeX leaderboard has them as booktabs rows."""
    root = tmp_path / "runs"
    shutil.copytree(runs / "par", root / "a")
    shutil.copytree(runs / "par", root / "b")
    best = json.loads((root / "b" / "best.json").read_text())
    best["seed"] = 7
    best["best"]["test"]["r2"] -= 0.1
    best["best"]["validation"]["r2"] += 0.01  # b is better on validation, worse on test
    (root / "b" / "best.json").write_text(json.dumps(best))
    r2 = [json.loads((root / d / "best.json").read_text())["best"]["test"]["r2"] for d in "ab"]
    out = tmp_path / "bench"
    assert main(["bench", "parallel_scaling_law", "--runs", str(root), "--out", str(out), "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    over = next(r for r in board if r["entry"] == "discovered (over seeds)")
    assert over["runs"] == 2 and over["seeds"] == "1,7" and over["law"] == "offline"
    assert over["r2"] == pytest.approx(sum(r2) / 2) and over["r2_sd"] == pytest.approx(0.1 / 2 ** 0.5)
    assert (over["r2_min"], over["r2_max"]) == (min(r2), max(r2))
    chosen = next(r for r in board if r["entry"] == "discovered (best)")
    assert chosen["seed"] == 7 and chosen["r2"] == pytest.approx(min(r2))  # chosen on validation, not on test
    tex = (out / "leaderboard.tex").read_text()
    assert main(["bench", "parallel_scaling_law", "--runs", str(root), "--out", str(out), "--format", "latex"]) == 0
    assert capsys.readouterr().out == tex
    assert r"\toprule" in tex and r"\label{tab:kepler-leaderboard}" in tex
    assert "mean $\\pm$ sd over 2 seeds" in tex and "fitted by Kepler" in tex and "published" in tex
