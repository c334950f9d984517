"""The offline grammar: seeded, readable, and able to reach effective-size and ratio forms on its own."""
from __future__ import annotations

import re

import numpy as np

from discovery.laws.law import parse_law
from discovery.search.proposers.base import ProposalContext
from discovery.search.proposers.offline import OfflineProposer
from discovery.tasks.data import load_frame
from discovery.tasks.spec import load_task


def _proposals(task_name: str, n: int = 40, seeds: range = range(6)) -> list:
    task = load_task(task_name)
    proposer = OfflineProposer(task)
    out = []
    for seed in seeds:
        out += proposer.propose([ProposalContext(task=task, generation=0, island=0, n=n, seed=seed)])[0].candidates
    return out


def test_same_seed_same_proposals():
    a = [c.formula for c in _proposals("moe_scaling_law", seeds=range(2))]
    b = [c.formula for c in _proposals("moe_scaling_law", seeds=range(2))]
    assert a == b and len(set(a)) > 30


def test_variables_sharing_a_unit_give_their_ratio():
    """data_constrained has tokens D and unique tokens U: epochs D/U becomes a variable of the grammar."""
    formulas = [c.formula for c in _proposals("data_constrained_scaling_law")]
    assert any("D/U" in f for f in formulas)
    assert not any("N/U" in f or "N/D" in f for f in formulas)  # parameters and tokens do not share a unit
    assert not any(re.search(r"\bE/N\b|\bN/E\b", c.formula) for c in _proposals("moe_scaling_law", seeds=range(2)))


def test_effective_size_block_stays_positive_on_the_data():
    """(N*(k*log(P/Pmin) + 1))**a: with k >= 0 the grown size is at least N on every observed row."""
    task = load_task("parallel_scaling_law")
    effective = [c for c in _proposals("parallel_scaling_law") if "*log(P) + 1" in c.formula]
    assert effective
    frame = load_frame(task)
    X = frame[task.columns].to_numpy(dtype=float)
    for c in effective[:5]:
        law = parse_law(c.formula, task.symbols)
        gains = [name for name, spec in c.constants.items() if name.startswith("k")]
        assert gains and all(c.constants[k].bounds[0] == 0.0 for k in gains)
        theta = np.array([c.constants[x.name].init for x in law.constants])
        assert np.isfinite(law.predict(X, theta)).all()


def test_repeated_data_gets_an_effective_size_with_diminishing_returns():
    """Tokens D over unique tokens U are epochs: U grown by them, saturating (Muennighoff et al.'s effective
    data), is in the grammar. One epoch counts as U itself and endless repetition as at most U (1 + k), so the
    block is finite and bounded on every observed row and far beyond them; tasks without a ratio never get it."""
    task = load_task("data_constrained_scaling_law")
    proposals = _proposals("data_constrained_scaling_law", seeds=range(20))
    repeated = [c for c in proposals if "exp((-D/U + 1)/k" in c.formula]
    assert repeated
    assert list(task.columns) == ["unique_tokens", "params", "tokens"]
    X = load_frame(task)[task.columns].to_numpy(dtype=float)
    beyond = X * np.array([1.0, 1.0, 1e6])  # a million times the tokens, the same unique tokens
    for c in repeated[:5]:
        law = parse_law(c.formula, task.symbols)
        theta = np.array([c.constants[x.name].init for x in law.constants])
        assert np.isfinite(law.predict(X, theta)).all() and np.isfinite(law.predict(beyond, theta)).all()
    assert not any("exp((-" in c.formula for c in _proposals("vocab_scaling_law"))


def test_constants_never_look_like_variables():
    """Domain mixture's variables are r1..r5, so rates are named R0, R1, ... instead of r0, r1, ..."""
    task = load_task("domain_mixture_scaling_law")
    for c in _proposals("domain_mixture_scaling_law", seeds=range(3)):
        law = parse_law(c.formula, task.symbols)
        assert not {x.name for x in law.constants} & {f"r{i}" for i in range(10)}


def _exp_arguments(formula: str, symbols: list[str]) -> list:
    import sympy as sp

    law = parse_law(formula, symbols)
    return [e.args[0] for e in sp.preorder_traversal(law.expr) if isinstance(e, sp.exp)]


def test_counted_quantities_enter_exponentials_only_through_their_log():
    """moe's parameters and experts have units: exp(r*N) would vanish or explode beyond the data, so N and E
    appear in exponentials only inside a log. lr_bsz's learning rate is dimensionless and may enter raw."""
    import sympy as sp

    moe = load_task("moe_scaling_law")
    arguments = [a for c in _proposals("moe_scaling_law") for a in _exp_arguments(c.formula, moe.symbols)]
    assert len(arguments) > 20
    for arg in arguments:
        outside_logs = arg.replace(sp.log, lambda *_: sp.Integer(0))
        assert not outside_logs.free_symbols & {sp.Symbol("N", real=True), sp.Symbol("E", real=True)}, arg
    lr = load_task("lr_bsz_scaling_law")
    raw_lr = [c.formula for c in _proposals("lr_bsz_scaling_law")
              if any("lr" in str(a) and "log" not in str(a) for a in _exp_arguments(c.formula, lr.symbols))]
    assert raw_lr


def test_optima_that_move_with_size_are_in_the_grammar():
    """A quadratic-in-log valley whose centre shifts with other variables (optimal learning rate vs N, D)."""
    pattern = re.compile(r"\(-m\d+ .*q\d+\*log\(.*\)\*\*2")
    assert any(pattern.search(c.formula) for c in _proposals("lr_bsz_scaling_law"))


def test_sign_priors_keep_a_saturating_laws_floor_inside_the_target_range():
    """sft's rectified law A0/(s0*(D/1e4)**a0 + 1) + E: with free signs its fit takes A0 < 0, a0 < 0 in many
    groups and predicts a negative loss far beyond the data (the far-field prior then ranks it last). With the
    sign priors the grammar bounds A0 >= 0 and E to the declared target range, and the same law keeps the prior."""
    from discovery.laws.fit import FitOptions, fit_law, recipe_options
    from discovery.laws.shape import shape_of
    from discovery.tasks.dataset import Dataset
    from evaluators.protocol import Protocol

    task = load_task("sft_scaling_law")
    context = ProposalContext(task=task, generation=0, island=0, n=8, seed=2)
    free = OfflineProposer(task).propose([context])[0].candidates
    signed = OfflineProposer(task, sign_priors=True).propose([context])[0].candidates
    assert [c.formula for c in free] == [c.formula for c in signed], "the same laws, only their bounds differ"
    rectified = [c for c in signed if re.fullmatch(r"A0/\(s0\*\(D/10000\)\*\*a0 \+ 1\) \+ E", c.formula)]
    assert rectified, "the grammar proposes sft's rectified form"
    offsets = [c.constants["E"] for c in signed if "E" in c.constants]
    assert offsets and all(spec.bounds == task.target_range for spec in offsets)
    assert all(c.constants["E"].bounds == (-np.inf, np.inf) for c in free if "E" in c.constants)

    protocol = Protocol(task, load_frame(task))
    law = parse_law(rectified[0].formula, task.symbols)
    seen = Dataset.concat(protocol.fit_part, protocol.validation)
    opts = recipe_options(FitOptions(seed=0, n_starts=32, n_refine=1, max_nfev=80, polish=False), "linear")
    verdicts = {}
    for name, specs in (("free", next(c for c in free if c.formula == rectified[0].formula).constants),
                        ("signed", rectified[0].constants)):
        assert name == "free" or specs["A0"].bounds[0] == 0.0
        fit = fit_law(law, protocol.fit_part, task.targets, specs, opts)
        verdicts[name] = shape_of(fit, seen, task.shape_priors(), far_field=True)
    assert verdicts["free"] and "possible range" in verdicts["free"], verdicts
    assert verdicts["signed"] is None, verdicts["signed"]
