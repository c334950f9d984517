"""The Python API (`import kepler`), like PySR's: discover, fit and load a run, with a law object; the README's
notebook example is taken from README.md and run as it is written, so it cannot rot."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kepler

REPO = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- notebook example, run by tests/test_api.py -->\s*```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "README.md has one tested notebook example"
    return blocks[0]


def test_the_readme_notebook_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md notebook example", "exec"), namespace)  # our README, not user input
    result, law = namespace["result"], namespace["result"].best
    assert isinstance(result, kepler.Result) and isinstance(law, kepler.Law)
    front = result.equations_
    assert {"formula", "complexity", "constants", "validation_r2", "test_r2"} <= set(front.columns)
    assert front["best"].sum() == 1 and front.loc[front["best"], "formula"].item() == law.formula
    assert "generations" in capsys.readouterr().err  # progress, one line per generation
    again = kepler.load_run(result.run_dir)
    assert again.best.formula == law.formula and again.best.constants == law.constants


def test_a_law_object_predicts_by_column_name_and_prints(tmp_path):
    n = np.geomspace(1e7, 3e9, 10)
    df = pd.DataFrame({"params": n, "loss": 2 + 1.5 * (n / 1e8) ** -0.3})
    law = kepler.fit(df, "E + A*(N/1e8)**(-a)", target="loss", vars="N=params", test="N >= 1e9")
    assert law.scores["test"]["r2"] > 0.999 and law.scores["validation"]["r2"] > 0.999
    assert abs(law.constants["all"]["a"] - 0.3) < 1e-4
    assert np.allclose(law.predict(df), df["loss"], rtol=1e-6)
    assert np.allclose(law.predict({"N": [1e8]}), [3.5], rtol=1e-6)  # a dict, by symbol
    with pytest.raises(KeyError, match="params"):
        law.predict(pd.DataFrame({"tokens": n}))
    assert law.latex().replace(" ", "") in (r"A\cdot\left(\frac{N}{10^{8}}\right)^{-a}+E",  # scale: a power of ten
                                            r"E+A\cdot\left(\frac{N}{10^{8}}\right)^{-a}")
    expr = law.sympy("all")  # the group's constants put in: only N is left
    assert float(expr.subs({s: 1e8 for s in expr.free_symbols})) == pytest.approx(3.5, rel=1e-6)
    namespace: dict = {}
    exec(compile(law.to_python(), "law.py", "exec"), namespace)  # the module kepler export writes
    assert np.allclose(namespace["predict"](df), df["loss"], rtol=1e-6)
