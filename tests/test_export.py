"""Exports of a real run's law: JSON round trip through `kepler fit --from`, a standalone Python module in
a fresh interpreter, an SLDBench program under SLDBench's protocol, LaTeX that parses back, BibTeX."""
from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from discovery.cli import main
from discovery.laws.canonical import canonical_rename
from discovery.laws.fit import FitOptions, fit_law
from discovery.laws.law import parse_law
from discovery.laws.uncertainty import BootstrapOptions
from discovery.outputs.export import FORMATS, export, record_from_run
from discovery.outputs.export.latex import PreciseLatexPrinter, to_latex
from discovery.outputs.export.latex import render as render_latex
from discovery.outputs.record import attach, record_from_law
from discovery.search.campaign import Campaign, CampaignSettings
from discovery.tasks.data import load_frame
from discovery.tasks.spec import list_tasks, load_task
from evaluators.benchmark import parse_human_law
from evaluators.protocol import Protocol

SMALL = dict(generations=2, population=6, islands=1, children=6, fit_starts=16, executor="serial")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, datasets_dir) -> Path:
    """A small finished campaign on parallel_scaling_law (2 groups)."""
    out = tmp_path_factory.mktemp("runs") / "par"
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("KEPLER_DATA_DIR"):
            mp.setenv("KEPLER_DATA_DIR", str(datasets_dir))
        Campaign(CampaignSettings(task="parallel_scaling_law", seed=3, out=str(out), **SMALL)).run()
    return out


@pytest.fixture(scope="module")
def record(run_dir, datasets_dir):
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("KEPLER_DATA_DIR"):
            mp.setenv("KEPLER_DATA_DIR", str(datasets_dir))
        rec = record_from_run(run_dir)
        attach(rec, rec.extra["protocol"], BootstrapOptions(n_resamples=60, n_jobs=1))
    return rec


def _test_rows(rec):
    return rec.extra["protocol"].final_test(purpose="test_export: compare predictions")


# --- JSON -------------------------------------------------------------------------------------------
def test_json_round_trip_through_fit_from_reproduces_predictions_exactly(record, tmp_path, capsys):
    path = export(record, ["json"], tmp_path)[0]
    data = json.loads(path.read_text())
    assert data["task"] == "parallel_scaling_law" and data["hash"] == record.law.hash
    assert {"train", "validation", "test"} <= set(data["metrics"])
    assert data["data"]["sources"][0]["sha256"] == record.task.sources[0].sha256
    assert data["kepler_version"] and data["seed"] == record.seed
    assert 0.0 <= data["uncertainty"]["coverage"]["prediction_band"] <= 1.0
    assert all(len(v) == 2 for c in data["constants"] for v in c["interval"].values())

    preds = tmp_path / "pred.csv"
    assert main(["fit", "--from", str(path), "--json", "--predictions", str(preds)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["refit"] is False and out["reproduced"] is True
    assert out["scores"]["test"]["r2"] == record.metrics["test"]["r2"]
    for (g, t), theta in record.constants.items():  # constants bit for bit
        assert list(out["constants"][f"{g}|{record.targets[t]}"].values()) == [float(v) for v in theta]

    test = _test_rows(record)
    expected = {int(r): p for r, p in zip(test.rows, record.predict(test)[:, 0], strict=True)}
    with preds.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["split", "row", "group", *record.task.columns, "observed_loss", "pred_loss"]
    got = {int(row["row"]): float(row["pred_loss"]) for row in rows if row["split"] == "test"}
    assert got.keys() == expected.keys()
    assert all(got[r] == expected[r] for r in got)  # exactly, not approximately
    observed = {int(r): y for r, y in zip(test.rows, test.Y[:, 0], strict=True)}
    inputs = {int(r): x for r, x in zip(test.rows, test.X, strict=True)}
    for row in rows:
        if row["split"] == "test":
            assert float(row["observed_loss"]) == observed[int(row["row"])]
            assert [float(row[c]) for c in record.task.columns] == list(inputs[int(row["row"])])


def test_fit_from_refit_fits_the_same_formula_again(record, tmp_path, capsys):
    path = export(record, ["json"], tmp_path)[0]
    assert main(["fit", "--from", str(path), "--refit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["canonical"] == record.law.canonical and "validation" in out


def test_fit_from_refuses_a_tampered_law_with_one_line(record, tmp_path, capsys):
    data = json.loads(export(record, ["json"], tmp_path)[0].read_text())
    data["formula"] = data["formula"] + " + 1"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert main(["fit", "--from", str(bad)]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps one long line
    assert err.startswith("error:") and "parses to law" in err and err.count("error:") == 1
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["fit", "--from", str(tmp_path / "junk.json")]) == 2
    assert "not a readable JSON file" in " ".join(capsys.readouterr().err.split())


# --- Python -----------------------------------------------------------------------------------------
def _fresh_predict(module: Path, X: np.ndarray, groups: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, list]:
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "groups.json").write_text(json.dumps(groups.tolist()))
    script = textwrap.dedent(f"""
        import importlib.util, json, sys
        import numpy as np
        spec = importlib.util.spec_from_file_location("law", {str(module)!r})
        law = importlib.util.module_from_spec(spec); spec.loader.exec_module(law)
        X = np.load({str(tmp_path / 'X.npy')!r})
        groups = json.load(open({str(tmp_path / 'groups.json')!r}))
        np.save({str(tmp_path / 'out.npy')!r}, law.predict(X, groups))
        roots = ('discovery', 'evaluators', 'sympy', 'scipy')
        print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in roots)))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return np.load(tmp_path / "out.npy"), json.loads(done.stdout)


def test_python_module_in_a_fresh_interpreter_matches_kepler(record, tmp_path):
    module = export(record, ["python"], tmp_path)[0]
    assert _imported_roots(module.read_text()) <= {"numpy", "functools"}
    test = _test_rows(record)
    X = np.vstack([record.extra["protocol"].train.X, test.X])
    groups = np.concatenate([record.extra["protocol"].train.groups, test.groups])
    got, imported = _fresh_predict(module, X, groups, tmp_path)
    want = np.concatenate([record.predict(record.extra["protocol"].train), record.predict(test)])[:, 0]
    assert imported == []  # numpy only: no Kepler, no SymPy, no SciPy
    assert np.max(np.abs(got - want) / np.abs(want)) <= 1e-12


def test_python_module_reads_columns_by_name_and_refuses_missing_ones(record, tmp_path):
    import pandas as pd

    law = _load(export(record, ["python"], tmp_path)[0])
    test = _test_rows(record)
    task = record.task
    frame = pd.DataFrame({c: test.X[:, j] for j, c in enumerate(task.columns)})
    frame[task.group_column] = test.groups
    want = record.predict(test)[:, 0]
    assert np.array_equal(law.predict(frame), want)
    assert np.array_equal(law.predict(frame[frame.columns[::-1]]), want)  # reordered columns: same numbers
    by_symbol = {s: test.X[:, j] for j, s in enumerate(task.symbols)}
    assert np.array_equal(law.predict(by_symbol, test.groups), want)  # a dict, keyed by the symbols
    with pytest.raises(KeyError, match=task.columns[1]):
        law.predict(frame.drop(columns=[task.columns[1]]))


def _multi_target_record():
    """observational_ruan2024: three targets, one group: a human law fitted on train, outside any run."""
    task = load_task("observational_ruan2024")
    human = next(h for h in task.human_laws if h.constants)
    law = parse_human_law(task, human)
    protocol = Protocol(task, load_frame(task))
    opts = FitOptions.from_settings(human.fit, n_starts=32)
    fit = fit_law(law, protocol.train, task.targets, human.constants, opts)
    return record_from_law(task, law, fit, human.constants, opts, protocol, label=human.name)


def test_python_module_handles_several_targets(tmp_path):
    rec = _multi_target_record()
    module = export(rec, ["python"], tmp_path)[0]
    test = _test_rows(rec)
    got, _ = _fresh_predict(module, test.X, test.groups, tmp_path)
    want = rec.predict(test)
    assert got.shape == want.shape == (len(test), 3)
    ok = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), ok) and np.max(np.abs(got[ok] - want[ok]) / np.abs(want[ok])) <= 1e-12


# --- SLDBench ---------------------------------------------------------------------------------------
def _load(program: Path):
    spec = importlib.util.spec_from_file_location(f"sld_{program.stem}", program)
    prog = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prog)
    return prog


def _sldbench_r2(program: Path, train, test) -> float:
    """SLDBench's protocol (evaluators.sldbench): fit_scaling_law per group on train, scaling_law_func on that
    group's test rows, predictions of all groups concatenated; R2 = 1 - mean NMSE."""
    from evaluators.sldbench import load_program, run_protocol

    return run_protocol(load_program(program), train, test)["r2"]


def _imported_roots(source: str) -> set[str]:
    tree = ast.parse(source)
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    return roots


def test_sldbench_program_fits_for_real_and_agrees_with_kepler(record, tmp_path):
    """The program fits every group's train rows itself (Kepler's algorithm, from Kepler's constants): no stored
    result is looked up, and under SLDBench's protocol its test R2 is Kepler's within 0.01."""
    program = export(record, ["sldbench"], tmp_path)[0]
    assert program.name == "sldbench_parallel_scaling_law.py"  # SLDBench's evaluator finds the task by name
    source = program.read_text()
    assert "def scaling_law_func(data_points, params)" in source
    assert "def fit_scaling_law(data_points, loss_values)" in source
    assert _imported_roots(source) <= {"numpy", "scipy", "functools", "warnings"}  # numpy, scipy, stdlib
    assert "REUSE" not in source and "sha256" not in source and "fingerprint" not in source
    protocol = record.extra["protocol"]
    r2 = _sldbench_r2(program, protocol.train, _test_rows(record))
    assert abs(r2 - record.metrics["test"]["r2"]) <= 0.01, (r2, record.metrics["test"]["r2"])
    # the rows decide: on other rows the constants move, and a group's fit does not depend on which group it is
    prog = _load(program)
    train = protocol.train
    g = record.groups[0]
    m = train.groups == g
    fitted = prog.fit_scaling_law(train.X[m], train.Y[m, 0])
    assert np.allclose(fitted, record.constants[(g, 0)], rtol=1e-3, atol=1e-6)
    half = prog.fit_scaling_law(train.X[m][::2], train.Y[m, 0][::2])
    assert np.all(np.isfinite(half)) and not np.allclose(half, fitted, rtol=1e-6, atol=0)


def test_sldbench_program_with_several_targets_and_new_data(tmp_path):
    rec = _multi_target_record()
    program = export(rec, ["sldbench"], tmp_path)[0]
    protocol = rec.extra["protocol"]
    test = _test_rows(rec)
    assert abs(_sldbench_r2(program, protocol.train, test) - rec.metrics["test"]["r2"]) <= 0.01
    prog = _load(program)
    keep = np.arange(len(protocol.train)) % 2 == 0
    params = prog.fit_scaling_law(protocol.train.X[keep], protocol.train.Y[keep])
    assert params.shape == (3, len(rec.law.constants)) and np.all(np.isfinite(params))


# --- LaTeX ------------------------------------------------------------------------------------------
def _parse_back(law) -> str:
    """Print the law with Kepler's printer, read it with SymPy's LaTeX parser, return its canonical form."""
    from sympy.parsing.latex import parse_latex

    printer = PreciseLatexPrinter()
    names = {}
    for s in [*law.variables, *law.constants]:
        tex = printer._print(s)
        for key in (tex, tex.lstrip("\\"), tex.strip("{}"), re.sub(r"\\mathit\{([^}]*)\}", r"\1", tex)):
            names[key] = s
    expr = parse_latex(to_latex(law.expr))
    expr = expr.xreplace({x: names[x.name] for x in expr.free_symbols})
    expr = expr.replace(lambda x: isinstance(x, sp.core.function.AppliedUndef) and x.func.__name__ in ("max", "min"),
                        lambda x: (sp.Max if x.func.__name__ == "max" else sp.Min)(*x.args))
    canon, _ = canonical_rename(expr.doit(), law.constants)
    return sp.sstr(canon, order="lex")


def _laws_to_print(record) -> list:
    best = json.loads((record.run_dir / "best.json").read_text())
    laws = [parse_law(r["formula"], record.task.symbols) for r in best["pareto_front"]]
    for name in list_tasks():
        task = load_task(name)
        for human in task.human_laws:
            # SymPy's parser truncates a multi-letter name with a subscript (`\mathit{eps}_{\mathit{inf}}`):
            # such names are renamed here, and their printing is checked on its own below.
            formula = human.formula.replace("eps_inf", "epsinf")
            laws.append(parse_law(formula, task.symbols, check_typos=False))  # declared in the task file
    laws.append(parse_law("c0 + c1*exp(-c2*N)*Max(P, 2) + sqrt(abs(N)) + tanh(P)**2 + log10(N) + Min(N, P)**0.5 "
                          "+ sigmoid(d*P) + log(P)**2 + RN*N", ["N", "P"], check_typos=False))  # RN: one edit from N
    return laws


def test_latex_equation_parses_back_to_the_same_canonical_law(record):
    pytest.importorskip("antlr4", reason="SymPy's LaTeX parser needs antlr4-python3-runtime 4.11")
    laws = _laws_to_print(record)
    assert len(laws) > 18
    for law in laws:
        assert _parse_back(law) == law.canonical, law.text
    assert to_latex(sp.Symbol("eps_inf")) == r"\mathit{eps}_{\mathit{inf}}"


def test_latex_structure_without_a_parser(record):
    """What holds whatever the parser: every symbol is printed, products are explicit, floats are rounded."""
    for law in _laws_to_print(record):
        tex = to_latex(law.expr)
        for s in [*law.variables, *law.constants]:
            if s in law.expr.free_symbols:
                assert PreciseLatexPrinter()._print(s) in tex
        assert tex.count("{") == tex.count("}") and tex.count(r"\left") == tex.count(r"\right")
    assert PreciseLatexPrinter(digits=3).doprint(sp.Float(1234567.891)) == r"1.23 \cdot 10^{6}"
    assert PreciseLatexPrinter(digits=4).doprint(sp.Float(0.0123456)) == "0.01235"


LATEX_COMMANDS = {  # what article + booktabs + amsmath + longtable provide, that the snippet may use
    "begin", "end", "label", "eqref", "caption", "centering", "small", "footnotesize", "scriptsize", "toprule",
    "midrule", "bottomrule", "endfirsthead", "endhead", "endlastfoot", "multicolumn", "emph", "setlength",
    "tabcolsep", "propto", "ldots",
    "mathrm", "mathit", "frac", "left", "right", "cdot", "log", "exp", "tanh", "max", "min", "sqrt",
    "infty", "le", "ge", "times", "to", "approx", "pm", "textasciitilde", "textasciicircum", "textbackslash",
    *"alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho sigma tau phi chi psi omega "
    "Gamma Delta Theta Lambda Xi Pi Sigma Phi Psi Omega".split(),
}
ENVIRONMENTS = {"equation", "equation*", "split", "table", "tabular", "longtable"}


def _check_latex_snippet(snippet: str) -> None:
    body = re.sub(r"(?m)^%.*$", "", snippet)
    assert body.count("{") - body.count(r"\{") == body.count("}") - body.count(r"\}")
    begins = re.findall(r"\\begin\{([^}]*)\}", body)
    assert begins == [e for e in re.findall(r"\\end\{([^}]*)\}", body)][::-1] or sorted(begins) == sorted(
        re.findall(r"\\end\{([^}]*)\}", body))
    assert set(begins) <= ENVIRONMENTS
    commands = set(re.findall(r"\\([A-Za-z]+)", body))
    assert commands <= LATEX_COMMANDS, commands - LATEX_COMMANDS
    cells = re.sub(r"\\begin\{tabular\}\[t\]\{@\{\}r@\{\}\}.*?\\end\{tabular\}", "cell", body)  # value over interval
    for table in re.findall(r"\\begin\{(?:tabular|longtable)\}\{([^}]*)\}(.*?)\\end\{(?:tabular|longtable)\}", cells,
                            re.S):
        spec, rows = table
        for row in rows.split(r"\\")[:-1]:
            row = re.sub(r"\\(toprule|midrule|bottomrule)", "", row).strip()
            if row:
                assert row.count("&") - row.count(r"\&") == len(spec) - 1, row
    body = re.sub(r"\\label\{[^}]*\}", "", body)
    text = re.sub(r"\$[^$]*\$", "", re.sub(r"\\begin\{equation\*?\}.*?\\end\{equation\*?\}", "", body, flags=re.S))
    assert not re.search(r"(?<!\\)[_%#^]", text), "unescaped special character outside math"


def test_latex_snippet_compiles_in_a_standard_article(record, tmp_path):
    snippet = render_latex(record)
    assert r"\usepackage{booktabs,amsmath,longtable}" in snippet and r"\toprule" in snippet
    assert "95\\%" in snippet and "coverage" in snippet.lower()
    _check_latex_snippet(snippet)
    _check_latex_snippet(render_latex(_multi_target_record()))
    if shutil.which("pdflatex") is None:
        return  # no TeX here: the structural check above stands in for compiling
    doc = ("\\documentclass{article}\n\\usepackage{booktabs,amsmath,longtable}\n\\begin{document}\n" + snippet
           + "\\end{document}\n")
    (tmp_path / "doc.tex").write_text(doc)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]


# --- Markdown, BibTeX, the command ------------------------------------------------------------------
def test_markdown_and_bibtex(record, tmp_path):
    md, bib = export(record, ["markdown", "bibtex"], tmp_path)
    text = md.read_text()
    assert "$$" in text and ("| constant |" in text or "| group |" in text) and "| test (extrapolation) |" in text
    assert re.search(r"\[-?[\d.e-]+, -?[\d.e-]+\]", text)  # intervals
    refs = bib.read_text()
    assert refs.count("@article") == 2 and refs.count("{") == refs.count("}")
    assert record.task.sources[0].sha256 in refs


def test_export_command_writes_every_format(run_dir, tmp_path, capsys):
    from discovery.cli.papers import FORMAT_NAMES

    assert tuple(FORMATS) == FORMAT_NAMES
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--bootstrap", "30", "--jobs", "1", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["law.tex", "law.md", "law.json", "parallel_scaling_law_law.py",
                            "sldbench_parallel_scaling_law.py", "references.bib"])
    assert all((out / n).stat().st_size > 100 for n in names)
    assert main(["export", str(run_dir), "--format", "json", "--bootstrap", "0", "--out", str(tmp_path / "j")]) == 0
    assert json.loads((tmp_path / "j" / "law.json").read_text())["uncertainty"] is None


def test_export_errors_are_one_line(run_dir, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--bootstrap", "0"]) == 2
    assert "no best.json" in " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert main(["export", str(run_dir), "--candidate", "99999", "--bootstrap", "0"]) == 2
    assert "no candidate #99999" in " ".join(capsys.readouterr().err.split())
