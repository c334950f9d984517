"""A user adds a task with one TOML file and one CSV, as the README describes."""
import hashlib
import math

import numpy as np
import pandas as pd

from discovery.cli import main
from discovery.tasks.data import load_frame
from discovery.tasks.spec import load_task


def test_user_task_from_one_toml_and_one_csv(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    n = np.array([1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9, 3e9] * 2)
    group = ["a"] * 8 + ["b"] * 8
    loss = 2.0 + 50 * n**-0.3 * np.where(np.array(group) == "a", 1.0, 1.3) + rng.normal(0, 1e-3, 16)
    split = ["train"] * 6 + ["test"] * 2 + ["train"] * 6 + ["test"] * 2
    data_dir = tmp_path / "data" / "my_task"
    data_dir.mkdir(parents=True)
    pd.DataFrame({"group": group, "n": n, "loss": loss, "split": split}).to_csv(data_dir / "data.csv", index=False)
    sha = hashlib.sha256((data_dir / "data.csv").read_bytes()).hexdigest()
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "my_task.toml").write_text(f'''
name = "my_task"
title = "My model-size sweep"
paper = "our lab notes"
group_column = "group"
targets = ["loss"]
constant_limit = 3
converter = "tidy_csv"
citation = "@misc{{mine, title={{mine}}}}"

[[variables]]
column = "n"
symbol = "N"
unit = "parameters"
range = [1e6, 3e9]

[split]
rule = "largest two sizes are test"
validation_axis = "n"

[[sources]]
file = "data.csv"
url = "https://example.org/data.csv"
sha256 = "{sha}"
format = "csv"
''')
    monkeypatch.setenv("KEPLER_TASKS_DIR", str(tasks_dir))
    monkeypatch.setenv("KEPLER_DATA_DIR", str(tmp_path / "data"))
    task = load_task("my_task")
    assert len(load_frame(task)) == 16
    assert main(["fit", "my_task", "E + A*(N/1e9)**(-a)", "--json"]) == 0
    out = capsys.readouterr().out
    import json
    result = json.loads(out)
    assert result["test"]["r2"] > 0.99 and math.isfinite(result["validation"]["r2"])
    assert set(result["constants"]) == {"a", "b"}
    # the data folder's copy is the task's one tidy_csv source: its pinned sha256 is checked there too
    from discovery.tasks import data

    (data_dir / "data.csv").write_text((data_dir / "data.csv").read_text().replace("train", "test", 1))
    data.clear_cache()
    assert main(["fit", "my_task", "E + A*(N/1e9)**(-a)"]) == 2
    assert "differs from the pinned" in " ".join(capsys.readouterr().err.split())


def test_wrong_field_names_file_field_and_expectation(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.toml").write_text('name = "bad"\ntitle = "x"\nconstant_limit = "four"\n')
    monkeypatch.setenv("KEPLER_TASKS_DIR", str(tmp_path))
    assert main(["fit", "bad", "A*N"]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "field" in err
