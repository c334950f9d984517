"""The command line as a user meets it: tasks, fit, bench, discover --config, runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from discovery.cli import main
from discovery.cli.console import num

REPO = Path(__file__).resolve().parent.parent
SLDBENCH = ["parallel_scaling_law", "vocab_scaling_law", "sft_scaling_law", "domain_mixture_scaling_law",
            "moe_scaling_law", "data_constrained_scaling_law", "lr_bsz_scaling_law", "easy_question_scaling_law"]


def test_tasks_lists_every_curated_task_with_counts(capsys):
    assert main(["tasks", "--json"]) == 0
    rows = {r["task"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(SLDBENCH) <= set(rows) and "chinchilla_approach3" in rows
    assert (rows["sft_scaling_law"]["train"], rows["sft_scaling_law"]["test"], rows["sft_scaling_law"]["groups"]) \
        == (504, 42, 42)
    assert rows["parallel_scaling_law"]["constant_limit"] == 4 and rows["lr_bsz_scaling_law"]["constant_limit"] is None


def test_fit_reports_constants_and_labelled_splits(capsys):
    assert main(["fit", "chinchilla_approach3", "E + A*N**(-alpha) + B*D**(-beta)", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["constants"]["all"]) == {"E", "A", "alpha", "B", "beta"}
    assert out["validation"]["fitted_on"] == "fit part of train" and out["test"]["fitted_on"] == "all of train"
    assert out["test"]["rows"] == 20
    assert main(["fit", "chinchilla_approach3", "__import__('os')"]) == 2
    assert "string" in capsys.readouterr().err


def test_a_fit_the_clock_stopped_says_so_and_how_to_give_it_more_time(capsys):
    # a fit of a very large CSV can spend its per-group limit screening starts; the reason must not read as if
    # the law had no finite fit
    # and a failed fit is not a success for a script that checks the exit status
    assert main(["fit", "chinchilla_approach3", "E + A*N**(-alpha) + B*D**(-beta)", "--time-limit", "1e-9"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "time limit (1e-09 CPU s per group)" in err and "kepler fit --time-limit" in err
    assert "the fit failed for 1 of 1 group fits" in err
    assert main(["fit", "chinchilla_approach3", "E + A*N**(-alpha) + B*D**(-beta)", "--time-limit", "30",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["failures"] == []


def test_bench_meets_published_scores_and_writes_results(tmp_path, capsys):
    assert main(["bench", *SLDBENCH, "--json", "--out", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    for r in rows:
        assert {"task", "law", "split", "r2", "nmse", "nmae", "published_r2"} <= set(r)
        assert r["split"] == "test"
    fitted = {r["task"]: r for r in rows if r["variant"] == "kepler_fit"}
    for task, r in fitted.items():
        assert r["r2_clipped"] >= r["published_r2"] - 0.02, (task, r["r2"], r["published_r2"])
    fixed = next(r for r in rows
                 if r["task"] == "data_constrained_scaling_law" and r["variant"] == "published_constants")
    assert abs(fixed["r2"] - 0.911) <= 0.002
    assert (tmp_path / "bench.json").exists() and (tmp_path / "bench.md").exists() and (tmp_path / "bench.csv").exists()


def test_python_dash_m_discovery_is_kepler():
    out = subprocess.run([sys.executable, "-m", "discovery", "tasks", "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "parallel_scaling_law" in out.stdout


def test_discover_from_a_campaign_file_then_runs_lists_it(tmp_path, capsys):
    config = tmp_path / "campaign.toml"
    config.write_text('task = "parallel_scaling_law"\ngenerations = 2\npopulation = 4\nchildren = 4\n'
                      f'executor = "serial"\nout = "{tmp_path / "run"}"\n')
    assert main(["discover", "--config", str(config)]) == 0
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["task"] == "parallel_scaling_law" and best["generations_completed"] == 2
    capsys.readouterr()
    assert main(["runs", "--dir", str(tmp_path), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert runs[0]["status"] == "finished" and runs[0]["task"] == "parallel_scaling_law"
    config.write_text('task = "parallel_scaling_law"\ngenerations = "many"\n')
    assert main(["discover", "--config", str(config)]) == 2
    assert "generations" in capsys.readouterr().err


def test_discover_piped_to_a_log_prints_a_readable_table(tmp_path):
    """Piped (a CI log, a file), the final table is laid out wide, not folded to 80 columns: each law's scores
    stay on its own row's line, and the table's title starts a line of its own after the progress panel."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "discovery", "discover", "parallel_scaling_law", "--generations", "1",
                          "--population", "4", "--children", "4", "--executor", "serial", "--out",
                          str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    human = json.loads((tmp_path / "run" / "best.json").read_text())["human"][0]
    lines = out.stdout.splitlines()
    assert any(line.strip().startswith("parallel_scaling_law: discovered vs human") for line in lines), out.stdout
    row = next(line for line in lines if "human:" in line)
    assert all(num(human["test"][k]) in row for k in ("r2", "nmse", "nmae")), out.stdout


def test_runs_lists_runs_written_with_out_and_refuses_a_missing_dir(tmp_path, monkeypatch, capsys):
    run = tmp_path / "elsewhere" / "exp1"
    assert main(["discover", "parallel_scaling_law", "--generations", "1", "--islands", "1", "--population", "4",
                 "--children", "4", "--executor", "serial", "--out", str(run)]) == 0
    monkeypatch.chdir(tmp_path)  # no results/ here: the run is found through the index of --out runs
    capsys.readouterr()
    assert main(["runs", "--json"]) == 0
    assert str(run.resolve()) in {str(Path(r["run_dir"]).resolve()) for r in json.loads(capsys.readouterr().out)}
    assert main(["runs", str(run), "--json"]) == 0  # a run directory given directly
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == ["finished"]
    assert main(["runs", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
