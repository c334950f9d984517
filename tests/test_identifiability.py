"""Redundant constants are caught before a fit is spent on them."""
from __future__ import annotations

import numpy as np

from discovery.laws.identifiability import redundant_constants, screening_rows
from discovery.laws.law import parse_law
from discovery.search.proposers.base import ProposalContext, Survivor
from discovery.search.proposers.offline import OfflineProposer
from discovery.tasks.data import load_frame
from discovery.tasks.spec import load_task
from evaluators.protocol import Protocol

GRID = np.array([[e, n] for e in np.geomspace(1, 512, 8) for n in np.geomspace(1e7, 4e8, 5)])


def test_merged_powers_and_repeated_terms_are_redundant():
    for text, names in [("A*(N/1e8)**a*(N/1e8)**b + C", {"a", "b"}),
                        ("A*log(N) + B*log(N) + C", {"A", "B"}),
                        ("A*exp(N/1e8*r) + B*exp(N/1e8*r) + C", {"A", "B"})]:
        why = redundant_constants(parse_law(text, ["E", "N"]), GRID, None)
        assert why is not None and set(why.split(":")[1].split(" cannot")[0].replace(" ", "").split(",")) == names


def test_a_constant_with_no_effect_is_named():
    why = redundant_constants(parse_law("A*(N/1e8)**a + 0*B + C", ["E", "N"]), GRID, None)
    assert why is None or "B" in why  # sympy folds 0*B away; nothing to fit either way


def test_variables_that_move_together_cannot_each_have_an_exponent():
    along_a_line = np.column_stack([np.geomspace(1, 512, 40), np.geomspace(1e7, 4e8, 40)[::-1]])
    assert redundant_constants(parse_law("A*(N/1e8)**a*(E/10)**b + C", ["E", "N"]), along_a_line, None)


def test_ordinary_laws_pass():
    for text in ["A*(N/1e8)**a*(E/10)**b + C", "A/(1 + s*(N/1e8)**a) + C", "A*exp(r*log(E/10) + q*log(N/1e8)) + C"]:
        assert redundant_constants(parse_law(text, ["E", "N"]), GRID, None) is None


def test_too_few_distinct_values_make_a_law_redundant_on_the_real_fit_rows():
    """parallel_scaling_law fits on P in {1, 2} only (P = 4 is validation, 8 is test): three constants in P
    alone cannot be fitted from two values, however the law is written."""
    task = load_task("parallel_scaling_law")
    rows = screening_rows(Protocol(task, load_frame(task)).fit_part)
    assert sorted(np.unique(rows[:, task.symbols.index("P")])) == [1.0, 2.0]
    assert redundant_constants(parse_law("A*P**a + C", task.symbols), rows, None) is not None
    assert redundant_constants(parse_law("A*P**a*(N/1e9)**b + C", task.symbols), rows, None) is None


def test_offline_proposer_skips_laws_the_screen_rejects():
    task = load_task("moe_scaling_law")
    rows = screening_rows(Protocol(task, load_frame(task)).fit_part)
    calls = []

    def screen(law, specs):
        why = redundant_constants(law, rows, specs, seed=0)
        calls.append(why)
        return why

    parent = Survivor(id=1, formula="A0*(N/100000000)**a0*(E/10)**a1 + E1", canonical="", complexity=14,
                      n_constants=4, val_r2=0.6, val_nmse=0.4,
                      constants={"A0": 1.2, "a0": -0.07, "a1": -0.05, "E1": 1.4})
    out = OfflineProposer(task).propose([ProposalContext(task=task, generation=1, island=0, n=24, seed=3,
                                                        survivors=[parent], screen=screen)])[0]
    assert len(out.candidates) == 24
    assert any(calls)  # the grammar does produce redundant laws; none of them was proposed
    for c in out.candidates:
        assert redundant_constants(parse_law(c.formula, task.symbols), rows, c.constants, seed=0) is None
