"""Canonical names and hashes are exactly those of the plain SymPy calls, although most of that work is skipped.

The shortcuts (discovery.laws.canonical, the proposer's naming order) must never change a hash or a formula
text: a hash decides which laws count as duplicates and seeds the redundant-constant screen, so a changed one
changes the campaign. Each test compares the shortcut with the plain computation on every law the offline
grammar writes for several tasks (random laws, then two rounds of mutation and crossover) and on hand-written
laws where a rewrite does apply.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from discovery.laws.canonical import (
    MAX_DEEP_REWRITE_NESTING,
    _function_nesting,
    canonical_rename,
    combine_exponentials,
)
from discovery.laws.law import LawError, parse_law
from discovery.search.proposers.offline import OfflineProposer, _first_appearance
from discovery.tasks.spec import load_task

TASKS = ["vocab_scaling_law", "moe_scaling_law", "domain_mixture_scaling_law", "lr_bsz_scaling_law",
         "easy_question_scaling_law"]
# Laws a rewrite changes (same base, exponentials, powers of powers, numbers to a power), and near misses
HAND = ["A*N**a*N**b + E", "A*exp(a*N)*exp(b*D)", "A*N*N**a", "A*2**(a*N)/4", "A*(N**a)**b", "A*sqrt(N*D)*N**a",
        "A*exp(a)*exp(b*N)", "A*N**a/N**b", "A*(N*D)**a*N**b", "A*exp(a*log(N))*N**b", "A*(1/N)**a*N**b + E",
        "A*(log(N)*log(D))**a", "A*exp(N)**a", "A*N**a*D**b + E", "A/(1 + exp(-a*(log(N) - b))) + E",
        "A*(N/1e9)**a*(N/1e9)**b", "A*N**(1/2)*(N*D)**(1/3)"]


def _genomes(proposer: OfflineProposer, n: int = 80) -> list:
    """Random laws, then two rounds of mutation and crossover: the grammar's products of one base, too."""
    rng = np.random.default_rng(7)
    genomes = [proposer.random_genome(rng) for _ in range(n)]
    for _ in range(2):
        genomes += [proposer.mutate(g, rng)[0] for g in genomes[-n:]]
        genomes += [proposer.crossover(genomes[int(i)], genomes[int(j)], rng)
                    for i, j in rng.integers(0, len(genomes), size=(n // 2, 2))]
    return genomes


def _grammar_laws(task_name: str) -> list:
    proposer = OfflineProposer(load_task(task_name))
    laws = []
    for rendered in filter(None, map(proposer.render, _genomes(proposer))):
        try:
            laws.append(parse_law(rendered[0], proposer.task.symbols, constants=list(rendered[1])))
        except LawError:
            continue
    return laws


@pytest.fixture(scope="module")
def laws() -> list:
    return [parse_law(text, ["N", "D"]) for text in HAND] + [law for name in TASKS for law in _grammar_laws(name)]


def test_exponentials_are_combined_exactly_as_powsimp_combines_them(laws):
    changed = 0
    for expr in (law.expr for law in laws):
        deep = _function_nesting(expr) <= MAX_DEEP_REWRITE_NESTING
        plain = sp.powsimp(expr, combine="exp", deep=deep)
        assert combine_exponentials(expr) == plain, expr
        changed += plain != expr
    assert changed >= 10, "the laws include ones powsimp rewrites, so a shortcut that skipped them would fail"


def _plain_keys_rename(expr: sp.Expr, constants) -> dict:
    shared, marked = sp.Symbol("_c", real=True), sp.Symbol("_x", real=True)
    keys = {c: sp.sstr(expr.xreplace({**{d: shared for d in constants}, c: marked}), order="lex") for c in constants}
    order = sorted(constants, key=lambda c: (keys[c], c.name))
    return {c: sp.Symbol(f"c{i}", real=True) for i, c in enumerate(order)}


def test_constants_get_the_canonical_names_plain_sstr_keys_give(laws):
    for law in laws:
        expr = combine_exponentials(law.expr)
        renamed, mapping = canonical_rename(expr, law.constants)
        assert mapping == _plain_keys_rename(expr, law.constants), law.text
        assert renamed == expr.xreplace(mapping)


@pytest.mark.parametrize("task_name", TASKS)
def test_the_proposer_names_constants_in_the_order_srepr_prints_them(task_name):
    proposer = OfflineProposer(load_task(task_name))
    for expr in (g.expr(proposer.offset_symbol) for g in _genomes(proposer)):
        text = sp.srepr(expr)
        assert _first_appearance(expr) == sorted(expr.free_symbols, key=lambda s: (text.find(f"'{s.name}'"), s.name))
