"""A researcher's own data: one command from a CSV, task folders of their own beside the curated ones, and
bad data refused with one line naming the file, the column and the row (never a row dropped in silence)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import sympy as sp

from discovery.cli import main
from discovery.laws.canonical import canonical_rename
from discovery.laws.law import parse_law
from discovery.tasks import data
from discovery.tasks.data import DataError, load_frame
from discovery.tasks.spec import list_tasks, load_task

PLANTED = dict(E=2.0, a=0.35)


def _planted_csv(path, noise=0.002, seed=1):
    """loss = E + A_g * (N/1e8)^-a with 0.2% noise, two model families (their own amplitude), 12 sizes each."""
    rng = np.random.default_rng(seed)
    rows = [dict(model=m, N=n, loss=(PLANTED["E"] + amp * (n / 1e8) ** -PLANTED["a"]) * (1 + rng.normal(0, noise)))
            for m, amp in (("small", 1.0), ("large", 1.4)) for n in np.geomspace(1e7, 3e9, 12)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _shape(expr: sp.Expr, n: sp.Symbol) -> str:
    """A law's form with its numbers taken out: the reference scale and the sign of an exponent in (N/1e8)**(-a)
    are its constants' business. Constants are named by their place in the form (Kepler's canonical naming)."""
    p = sp.Symbol("p", real=True)
    expr = expr.replace(lambda e: e.is_Pow and e.base.has(n) and e.exp.free_symbols, lambda e: n ** p)
    canon, _ = canonical_rename(expr, sorted(expr.free_symbols - {n}, key=str))
    return sp.sstr(canon, order="lex")


def test_discover_csv_recovers_a_planted_law_in_one_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _planted_csv(tmp_path / "runs.csv")
    argv = ["discover", "--csv", "runs.csv", "--target", "loss", "--vars", "N", "--group", "model",
            "--test", "N >= 1e9", "--generations", "2", "--islands", "1", "--population", "6", "--children", "6",
            "--executor", "serial", "--out", "run"]
    assert main(argv) == 0
    task = load_task(str(tmp_path / "run" / "runs.toml"))  # written beside the run, to be edited and reused
    assert task.data == "../runs.csv" and task.split.test_when == "N >= 1e9" and task.group_column == "model"
    assert task.variables[0].range == (1e7, 3e9)
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    n = sp.Symbol("N", real=True)
    planted = _shape(parse_law("E + A*(N/1e8)**(-a)", ["N"]).expr, n)
    found = [r for r in best["pareto_front"] if _shape(parse_law(r["formula"], ["N"]).expr, n) == planted]
    assert found, [r["formula"] for r in best["pareto_front"]]
    law = found[0]
    assert law["test"]["r2"] > 0.99
    for consts in law["constants"].values():  # the planted exponent and floor, within the noise
        exponent = next(v for k, v in consts.items() if k.startswith("a"))
        assert abs(abs(exponent) - PLANTED["a"]) < 0.03 and abs(consts["E"] - PLANTED["E"]) < 0.05
    assert best["human"][0]["law"] == "power law with offset (baseline)"
    # the inferred file is a task like any other: fit and bench take it by path
    assert main(["fit", str(tmp_path / "run" / "runs.toml"), "E + A*(N/1e8)**(-a)", "--starts", "16", "--json"]) == 0


def test_test_rules_go_through_an_allow_list():
    from discovery.tasks.rules import RuleError, parse_rule

    frame = pd.DataFrame({"N": [1e8, 1e9, 3e9], "model": ["a", "b", "b"]})
    rule = parse_rule("N >= 1e9 and model == 'b'")
    assert rule.evaluate({"N": frame["N"], "model": frame["model"]}).tolist() == [False, True, True]
    assert parse_rule("1e8 < N/10 <= 1e9").evaluate({"N": frame["N"]}).tolist() == [False, False, True]
    for hostile in ("__import__('os').system('x') or N > 1", "N.__class__ > 1", "[N for N in N]", "N > 1 if N else 0",
                    "lambda: N", "N"):
        with pytest.raises(RuleError):
            parse_rule(hostile).evaluate({"N": frame["N"]})


def _user_task(folder, name="mine", data_line=None, extra="", split="", rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    n = np.geomspace(1e6, 1e9, 8)
    table = rows if rows is not None else pd.DataFrame(
        {"n": n, "loss": 2 + 30 * n ** -0.3, "split": ["train"] * 6 + ["test"] * 2})
    table.to_csv(folder / "data" / f"{name}.csv", index=False)
    data_line = data_line or f'data = "data/{name}.csv"'
    (folder / f"{name}.toml").write_text(f'''name = "{name}"
title = "my sweep"
paper = "lab notes"
targets = ["loss"]
{data_line}
citation = "@misc{{m, title={{m}}}}"
{extra}
[[variables]]
column = "n"
symbol = "N"
range = [1e6, 1e9]

[split]
rule = "largest sizes"
validation_axis = "n"
{split}
''')
    return folder / f"{name}.toml"


def test_user_task_folders_add_to_the_curated_ones_with_data_beside_the_task(tmp_path, monkeypatch):
    """KEPLER_TASKS_DIR takes several folders, ./tasks counts too, the CSV is found relative to its task file with
    no [[sources]], and a data folder of the user's own does not hide the curated tasks."""
    _user_task(tmp_path / "a", "mine_a")
    _user_task(tmp_path / "b", "mine_b")
    _user_task(tmp_path / "work" / "tasks", "mine_c")
    monkeypatch.chdir(tmp_path / "work")
    import os

    monkeypatch.setenv("KEPLER_TASKS_DIR", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    names = list_tasks()
    assert {"mine_a", "mine_b", "mine_c", "sft_scaling_law", "chinchilla_approach3"} <= set(names)
    frame = load_frame(load_task("mine_c"))
    assert len(frame) == 8 and frame.attrs["data_source"].endswith("mine_c.csv")
    # a user data folder first, the curated mirror after it: both found
    monkeypatch.setenv("KEPLER_DATA_DIR", f"{tmp_path / 'a'}{os.pathsep}{os.environ['KEPLER_DATA_DIR']}")
    assert len(load_frame(load_task("parallel_scaling_law"))) == 48


def test_local_data_sha256_is_recorded_on_first_use_and_checked_after(tmp_path):
    path = _user_task(tmp_path, "mine")
    task = load_task(str(path))
    load_frame(task)
    record = tmp_path / "mine.sha256"
    csv = tmp_path / "data" / "mine.csv"
    assert record.read_text().split()[0] == hashlib.sha256(csv.read_bytes()).hexdigest()
    csv.write_text(csv.read_text().replace("train", "test", 1))
    data.clear_cache()
    with pytest.raises(DataError, match=r"mine\.csv: sha256 .* recorded in .*mine\.sha256"):
        load_frame(task)


def test_a_broken_task_is_reported_on_its_own_line_and_the_others_still_list_and_bench(tmp_path, monkeypatch,
                                                                                        capsys):
    _user_task(tmp_path, "good")
    (tmp_path / "bad_toml.toml").write_text('name = "bad_toml"\ntitle = [\n')
    _user_task(tmp_path, "no_data", data_line='data = "data/missing.csv"')
    monkeypatch.setenv("KEPLER_TASKS_DIR", str(tmp_path))
    assert main(["tasks", "--json"]) == 1
    out = capsys.readouterr()
    listed = {r["task"] for r in json.loads(out.out)}
    assert {"good", "parallel_scaling_law", "sft_scaling_law"} <= listed and not listed & {"bad_toml", "no_data"}
    err = " ".join(out.err.split())
    assert "skipped task bad_toml:" in err and "not valid TOML" in err and "skipped task no_data:" in err
    assert main(["bench", "no_data", "parallel_scaling_law", "--json", "--out", str(tmp_path / "bench")]) == 1
    out = capsys.readouterr()
    assert {r["task"] for r in json.loads(out.out)} == {"parallel_scaling_law"}
    assert "skipped task no_data" in " ".join(out.err.split())


@pytest.mark.parametrize("edit, expected", [
    (dict(split=["train", "tset", "train", "train", "train", "train", "test", "test"]),
     r"mine\.csv: column 'split', line 3: split label 'tset' is not one of: train, test"),
    (dict(split=["train"] * 8), r"mine\.csv: no test rows for task 'mine'"),
    (dict(n=[-1.0, *np.geomspace(1e6, 1e9, 8)[1:]]),
     r"mine\.csv: column 'n' \(variable N\), line 2: -1\.0 lies outside the declared range \[1e\+06, 1e\+09\]"),
])
def test_bad_rows_are_refused_with_file_column_and_line(tmp_path, edit, expected):
    n = np.geomspace(1e6, 1e9, 8)
    table = pd.DataFrame({"n": n, "loss": 2 + 30 * n ** -0.3, "split": ["train"] * 6 + ["test"] * 2})
    for col, values in edit.items():
        table[col] = values
    path = _user_task(tmp_path, "mine", rows=table)
    with pytest.raises(DataError, match=expected):
        load_frame(load_task(str(path)))


def test_a_typo_in_the_converter_names_the_file_and_the_field(tmp_path):
    path = _user_task(tmp_path, "mine", extra='converter = "tidy_cvs"')
    with pytest.raises(DataError, match=r"mine\.toml: field `converter`: unknown converter 'tidy_cvs'; known"):
        load_frame(load_task(str(path)))


def test_a_reserved_constant_name_names_the_file_and_the_law(tmp_path, capsys):
    law = '''
[[human_laws]]
name = "saturating"
formula = "E + S*N**(-a)"
source = "me"
constants = { E = { init = 2.0 }, S = { init = 1.0 }, a = { init = 0.3 } }
'''
    path = _user_task(tmp_path, "mine", split=law)
    assert main(["bench", str(path), "--json", "--out", str(tmp_path / "bench")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "mine.toml: human law 'saturating': name 'S' is not allowed as a constant (reserved:" in err


def test_published_constants_per_group(tmp_path, capsys):
    n = np.geomspace(1e6, 1e9, 8)
    rows = pd.concat([pd.DataFrame({"g": g, "n": n, "loss": 2 + amp * 30 * n ** -0.3,
                                    "split": ["train"] * 6 + ["test"] * 2}) for g, amp in (("x", 1.0), ("y", 2.0))])
    law = '''
[[human_laws]]
name = "power law"
formula = "E + A*N**(-a)"
source = "me"
[human_laws.published_constants.x]
E = 2.0
A = 30.0
a = 0.3
[human_laws.published_constants.y]
E = 2.0
A = 60.0
a = 0.3
'''
    path = _user_task(tmp_path, "mine", extra='group_column = "g"', split=law, rows=rows)
    assert main(["bench", str(path), "--json", "--out", str(tmp_path / "bench")]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["variant"] == "published_constants" and row["r2"] > 1 - 1e-9  # each group its own exact constants


def test_a_test_rule_along_either_of_two_variables_gives_a_validation_along_both(tmp_path):
    """`--test "N >= a or D >= b"` is a test split of the largest models or the largest budgets: the inferred task
    carves validation the same way (largest N rows and largest D rows), so laws are chosen on both."""
    from discovery.tasks.inferred import TableSpec, write_task
    from discovery.tasks.rules import parse_rule
    from evaluators.protocol import Protocol

    assert parse_rule("N >= 1e9 or 1e11 < D").lower_bounds() == ["N", "D"]
    assert parse_rule("N >= 1e9").lower_bounds() == ["N"]
    for narrower in ("N >= 1e9 and D >= 1e11", "N <= 1e9 or D >= 1e11", "N/2 >= 1e9 or D > 1"):
        assert parse_rule(narrower).lower_bounds() == []
    n, d = np.meshgrid(np.geomspace(1e7, 3e9, 8), np.geomspace(1e9, 3e11, 8))
    loss = 1.7 + 400 / n.ravel() ** 0.34 + 410 / d.ravel() ** 0.28
    pd.DataFrame({"params": n.ravel(), "tokens": d.ravel(), "loss": loss}).to_csv(tmp_path / "g.csv", index=False)
    spec = TableSpec.from_options("loss", "N=params,D=tokens", test="N >= 1e9 or D >= 1e11")
    task = load_task(str(write_task(tmp_path / "g.csv", spec, tmp_path)))
    assert (task.split.validation_axis, task.split.validation_or) == ("params", ["tokens"])
    protocol = Protocol(task, load_frame(task))
    fit, val = protocol.fit_part.X, protocol.validation.X
    beyond_n, beyond_d = val[:, 0] > fit[:, 0].max(), val[:, 1] > fit[:, 1].max()
    assert (beyond_n & ~beyond_d).any() and (beyond_d & ~beyond_n).any() and (beyond_n | beyond_d).all()
    one_axis = TableSpec.from_options("loss", "N=params,D=tokens", test="N >= 1e9 and D >= 1e11", name="corner")
    assert load_task(str(write_task(tmp_path / "g.csv", one_axis, tmp_path))).split.validation_or == []
