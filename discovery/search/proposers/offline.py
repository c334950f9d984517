"""The offline proposer: symbolic mutation and crossover over a grammar of scaling-law blocks.

A genome is a sum of terms (plus an optional offset) over *scaled* variables u = x / ref, where
ref is a fixed power of ten taken from the variable's declared observed range, so constants are of
order one. Blocks: power laws, logs and quadratic-in-log terms, quadratic-in-log valleys around an
optimum that moves as a power of other variables (as optimal hyperparameters move with size),
exponentials, saturating and logistic forms, products of powers, exp-linear mixtures, and powers of
an "effective size" (one variable grown log-linearly by another, as in effective parameters or
effective data). Variables that share a unit also give their ratio (tokens / unique tokens =
epochs) as one more variable, and with it one more block: the power of the ratio's denominator grown
by the repetitions, with diminishing returns (u (1 + k (1 - exp(-(r - 1) / k))), Muennighoff et al.'s
effective data, which counts repeated tokens less and less). A quantity with a unit (parameters,
tokens, experts) enters an exponential only through its log, that is as a power: exp(r*N) carries a
characteristic size and vanishes or explodes beyond the data, which an extrapolating law cannot
afford; dimensionless variables (a learning rate, shares, ratios such as epochs) may enter raw.
Mutations replace, add or drop a term, multiply a term by a factor, merge two terms into a product,
offset a power's base, make an exponent depend on another variable, swap variables, or toggle the
offset; crossover mixes the terms of two survivors. Everything is seeded; nothing task-specific is
written here.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import count
from typing import Callable

import numpy as np
import sympy as sp

from discovery.laws.guard import LIGHT_IN_PROCESS
from discovery.laws.law import Law, LawError, near_miss
from discovery.search.proposers.base import Candidate, Proposal, ProposalContext, Proposer, Survivor
from discovery.tasks.spec import Task
from discovery.tasks.values import ConstantSpec

AMPLITUDE = ConstantSpec(init=1.0)
POSITIVE_AMPLITUDE = ConstantSpec(init=1.0, bounds=(0.0, math.inf))
EXPONENT = ConstantSpec(init=-0.5, bounds=(-4.0, 4.0))
RATE = ConstantSpec(init=-1.0, bounds=(-20.0, 20.0))
POSITIVE_SCALE = ConstantSpec(init=1.0, bounds=(1e-4, 1e4))
BASE_OFFSET = ConstantSpec(init=0.1, bounds=(0.0, 1e3))
LOG_GAIN = ConstantSpec(init=0.5, bounds=(0.0, 100.0))
REPEAT_GAIN = ConstantSpec(init=5.0, bounds=(0.1, 100.0))  # how many repetitions are worth new data, at most
SHIFT = ConstantSpec(init=0.0, bounds=(-3.0, 3.0))  # how fast an optimum moves with another variable (log-log)
MAX_TRIES = 30
DIMENSIONLESS_UNITS = {"", "1", "fraction", "ratio"}
OFFSET = "_E"  # internal name of the offset constant (rendered as E, or E0, E1... if a variable is called E)


@dataclass(frozen=True)
class ScaledVariable:
    symbol: str  # as written in formulas
    u: sp.Symbol  # scaled stand-in used while building genomes
    ref: float  # u = x / ref  (1.0 when the variable is not strictly positive)
    positive: bool
    center: float  # middle of the observed range, in scaled units (logistic centers start here)
    low: float = 1.0  # smallest observed value rounded down to 3 digits, raw units (log(x / low) >= 0 on the data)
    ratio_of: tuple[str, str] | None = None  # a derived dimensionless variable: numerator / denominator symbols
    counted: bool = False  # a positive quantity with a unit (parameters, tokens, experts): in exp() only via log


def offset_spec(target_range: tuple[float, float] | None) -> ConstantSpec:
    """An offset bounded by the target's declared range. The offset is the law's value where its other terms
    vanish (the floor of a loss, as N grows), so a cross-entropy's offset is never negative. Why it matters
    beside a saturating term A / (1 + s u^a): with A < 0 and a < 0 the same curve has the floor E + A, which
    the fit may drive below zero although E alone looks sane; a positive A leaves E as the floor."""
    if target_range is None:
        return AMPLITUDE
    lo, hi = target_range
    init = (lo + hi) / 2 if math.isfinite(lo) and math.isfinite(hi) else min(max(1.0, lo), hi)
    return ConstantSpec(init=init, bounds=(lo, hi))


def _round_down(x: float) -> float:
    """x rounded down to 3 significant digits (a readable lower bound: 5.358e8 -> 5.35e8)."""
    scale = 10.0 ** (math.floor(math.log10(x)) - 2)
    return math.floor(x / scale) * scale if x > 0 else x


def _first_appearance(expr: sp.Expr) -> list[sp.Symbol]:
    """The symbols of `expr` in the order SymPy prints them (terms and factors in printing order), so constants
    are named A0, A1, ... as a reader meets them; the same order as their first place in `sp.srepr(expr)`,
    without printing it."""
    out: list[sp.Symbol] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if node.is_Symbol:
            if node not in out:
                out.append(node)
        elif node.is_Add:
            stack.extend(reversed(node.as_ordered_terms()))
        elif node.is_Mul:
            stack.extend(reversed(node.as_ordered_factors()))
        else:
            stack.extend(reversed(node.args))
    return out


def scaled_variables(task: Task) -> list[ScaledVariable]:
    out = []
    for v in task.variables:
        lo, hi = v.range if v.range else (1.0, 10.0)
        positive = lo > 0
        if positive:
            ref = 10.0 ** round(math.log10(math.sqrt(lo * hi)))
            center = math.log(math.sqrt(lo * hi) / ref)
        else:
            mag = max(abs(lo), abs(hi), 1e-12)
            ref = 10.0 ** math.floor(math.log10(mag)) if mag >= 10 else 1.0
            center = (lo + hi) / 2 / ref
        low = _round_down(lo) if positive else 1.0
        counted = positive and v.unit.strip().lower() not in DIMENSIONLESS_UNITS
        out.append(ScaledVariable(v.symbol, sp.Symbol(f"U_{v.symbol}", real=True), ref, positive, center, low,
                                  counted=counted))
    return out + _ratios(task)


def _ratios(task: Task) -> list[ScaledVariable]:
    """Dimensionless ratios of positive variables that share a unit (tokens / unique tokens = epochs), the
    larger-ranged one on top. Unscaled: such ratios are of order one to a hundred by nature."""
    out = []
    for i, j in task.same_unit_pairs():
        a, b = task.variables[i], task.variables[j]
        top, bottom = (a, b) if math.prod(a.range) >= math.prod(b.range) else (b, a)
        lo = top.range[0] / bottom.range[1]
        center = 0.5 * math.log(math.prod(top.range) / math.prod(bottom.range))
        out.append(ScaledVariable(f"{top.symbol}/{bottom.symbol}", sp.Symbol(f"U_{top.symbol}_per_{bottom.symbol}",
                                  real=True), 1.0, True, center, _round_down(lo), (top.symbol, bottom.symbol)))
    return out


@dataclass
class Genome:
    terms: list[sp.Expr]
    offset: bool
    specs: dict[str, ConstantSpec]

    def expr(self, offset_symbol: sp.Symbol) -> sp.Expr:
        body = sp.Add(*self.terms)
        return body + offset_symbol if self.offset else body


class _Names:
    """Fresh constant symbols with readable role prefixes."""

    def __init__(self) -> None:
        self._ids = count()

    def new(self, prefix: str, spec: ConstantSpec, specs: dict[str, ConstantSpec]) -> sp.Symbol:
        name = f"_{prefix}{next(self._ids)}"  # internal: "_" never clashes with a variable; renamed on render
        specs[name] = spec
        return sp.Symbol(name, real=True)


class OfflineProposer(Proposer):
    name = "offline"

    def __init__(self, task: Task, parse: Callable[..., Law] = LIGHT_IN_PROCESS, memoize: bool = False,
                 basis: bool = False, sign_priors: bool = False):
        self.task = task
        self.use_basis = basis  # generation 0 proposes the classic families first (see basis())
        # sign priors: a saturating term's amplitude is positive and the offset lies in the target's declared range
        self.saturating_amplitude = POSITIVE_AMPLITUDE if sign_priors else AMPLITUDE
        self.offset_spec = offset_spec(task.target_range) if sign_priors else AMPLITUDE
        # parse_law within the time bound (in process for the grammar's own, light laws; a genome grown from an LLM's
        # survivor may not be light), over a cached parse with the campaign's fast engine
        self.parse = parse
        self.memoize = memoize  # the fast engine remembers survivors' genomes (a pure function of the survivor)
        self._genomes: dict[tuple, Genome | None] = {}
        self.vars = scaled_variables(task)
        self.limit = task.constant_limit or 10
        self.offset_symbol = sp.Symbol(OFFSET, real=True)

    # --- building blocks ---------------------------------------------------------------
    def _block(self, rng: np.random.Generator, names: _Names, specs: dict) -> sp.Expr:
        v = self.vars[rng.integers(len(self.vars))]
        u = v.u
        A = names.new("A", AMPLITUDE, specs)
        if v.positive:
            kind = rng.choice(["pow", "pow", "pow", "log", "logsq", "exp" if not v.counted else "pow", "sat",
                               "logistic", "pow2", "explin", "effective", "optimum"]
                              + (["repeated"] if v.ratio_of else []))
        else:
            kind = rng.choice(["lin", "quad", "exp", "logistic", "tanh", "explin"])
        if kind == "pow":
            return A * u ** names.new("a", EXPONENT, specs)
        if kind == "log":
            return A * sp.log(u)
        if kind == "logsq":
            return A * sp.log(u) ** 2
        if kind == "lin":
            return A * u
        if kind == "quad":
            return A * u**2
        if kind == "exp":
            return A * sp.exp(names.new("r", RATE, specs) * u)
        if kind == "sat":
            specs[A.name] = self.saturating_amplitude
            return A / (1 + names.new("s", POSITIVE_SCALE, specs) * u ** names.new("a", EXPONENT, specs))
        if kind in ("logistic", "tanh"):
            z = sp.log(u) if v.positive else u
            center = names.new("m", ConstantSpec(init=v.center, bounds=(v.center - 20, v.center + 20)), specs)
            slope = names.new("r", RATE, specs)
            if kind == "tanh":
                return A * sp.tanh(slope * (z - center))
            return A / (1 + sp.exp(-slope * (z - center)))
        if kind == "repeated":
            return self._repeated(v, A, names, specs)
        others = [w for w in self.vars if w.positive and w is not v]
        if kind == "optimum":  # a quadratic-in-log valley whose optimum moves as a power of other variables
            center = names.new("m", ConstantSpec(init=v.center, bounds=(v.center - 20, v.center + 20)), specs)
            k = int(rng.integers(0, len(others) + 1))
            chosen = [others[i] for i in sorted(rng.choice(len(others), size=k, replace=False))] if k else []
            shift = sp.Add(*[names.new("q", SHIFT, specs) * sp.log(w.u) for w in chosen])
            return A * (sp.log(u) - center - shift) ** 2
        if kind == "effective" and others:  # a power of an "effective size": u grown log-linearly by another variable
            w = others[int(rng.integers(len(others)))]
            gain = names.new("k", LOG_GAIN, specs)
            grown = sp.log(w.u * sp.Rational(repr(w.ref)) / sp.Rational(repr(w.low)))  # log(x / smallest x)
            return A * (u * (1 + gain * grown)) ** names.new("a", EXPONENT, specs)
        if kind in ("pow2", "effective"):  # a product of powers of several variables
            k = int(rng.integers(1, len(others) + 1)) if others else 0
            chosen = [others[i] for i in sorted(rng.choice(len(others), size=k, replace=False))] if k else []
            return A * sp.Mul(*[w.u ** names.new("a", EXPONENT, specs) for w in [v, *chosen]])
        # explin: an exponential of a linear mixture of several variables (often all of them)
        k = len(self.vars) if rng.random() < 0.5 else int(rng.integers(1, len(self.vars) + 1))
        chosen = [self.vars[i] for i in sorted(rng.choice(len(self.vars), size=k, replace=False))]
        lin = sp.Add(*[names.new("r", RATE, specs) * (sp.log(w.u) if w.counted or (w.positive and len(chosen) == 1)
                                                      else w.u) for w in chosen])
        return A * sp.exp(lin)

    def _repeated(self, ratio: ScaledVariable, A: sp.Symbol, names: _Names, specs: dict) -> sp.Expr:
        """A power of the ratio's denominator grown by the repetitions the ratio counts (tokens per unique token),
        with diminishing returns: u at one repetition, at most u (1 + k) however often it is repeated."""
        bottom = next(w for w in self.vars if w.symbol == ratio.ratio_of[1])
        gain = names.new("k", REPEAT_GAIN, specs)
        effective = bottom.u * (1 + gain * (1 - sp.exp(-(ratio.u - 1) / gain)))
        return A * effective ** names.new("a", EXPONENT, specs)

    def _factor(self, rng: np.random.Generator, names: _Names, specs: dict) -> sp.Expr:
        v = self.vars[rng.integers(len(self.vars))]
        roll = rng.random() if v.positive else 1.0
        if roll < 0.7:
            return v.u ** names.new("a", EXPONENT, specs)
        if roll < 0.85 or (v.positive and v.counted):
            return 1 / (1 + names.new("s", POSITIVE_SCALE, specs) * v.u ** names.new("a", EXPONENT, specs))
        return sp.exp(names.new("r", RATE, specs) * v.u)

    def basis(self) -> list[Genome]:
        """The classic families, proposed before anything random: an offset plus one power law per positive
        variable (an exponential for a variable that may be zero or negative), the sum of those terms over
        all variables (the Chinchilla form), for several positive variables their product, and where a ratio
        counts repetitions, the effective size under repetition alone and beside power laws of the other
        variables (Muennighoff et al.'s form). The simplest laws of the field are then always among the
        candidates, whatever the seed; one that exceeds the task's constant limit is skipped."""
        own = [v for v in self.vars if v.ratio_of is None]
        positive = [v for v in own if v.positive]
        groups = [[v] for v in own] + ([own] if len(own) > 1 else [])
        out = []
        for vs in groups:
            names, specs = _Names(), {}
            terms = [self._basic_term(v, names, specs) for v in vs]
            out.append(Genome(terms, offset=True, specs=specs))
        if len(positive) > 1:
            names, specs = _Names(), {}
            product = names.new("A", AMPLITUDE, specs) * sp.Mul(*[v.u ** names.new("a", EXPONENT, specs)
                                                                 for v in positive])
            out.append(Genome([product], offset=True, specs=specs))
        for ratio in (v for v in self.vars if v.ratio_of):  # repeated data: alone, and beside the other variables
            rest = [v for v in positive if v.symbol not in ratio.ratio_of]
            for others in ([], rest) if rest else ([],):
                names, specs = _Names(), {}
                terms = [self._basic_term(v, names, specs) for v in others]
                terms.append(self._repeated(ratio, names.new("A", AMPLITUDE, specs), names, specs))
                out.append(Genome(terms, offset=True, specs=specs))
        return out

    @staticmethod
    def _basic_term(v: ScaledVariable, names: _Names, specs: dict) -> sp.Expr:
        """A power law in a positive variable; an exponential in one that may be zero or negative."""
        A = names.new("A", AMPLITUDE, specs)
        if v.positive:
            return A * v.u ** names.new("a", EXPONENT, specs)
        return A * sp.exp(names.new("r", RATE, specs) * v.u)

    def random_genome(self, rng: np.random.Generator) -> Genome:
        names, specs = _Names(), {}
        terms = [self._block(rng, names, specs) for _ in range(int(rng.integers(1, 3)))]
        genome = Genome(terms, offset=bool(rng.random() < 0.75), specs=specs)
        return genome

    # --- survivors back into genomes -----------------------------------------------------
    def genome_from_survivor(self, s: Survivor) -> Genome | None:
        """A survivor's law as a genome (the same object for the same survivor: genomes are never changed)."""
        if not self.memoize:
            return self._genome_from_survivor(s)
        key = (s.formula, tuple(sorted(s.constants.items())),
               tuple(sorted((k, v.init, v.bounds) for k, v in (s.constant_specs or {}).items())))
        if key not in self._genomes:
            self._genomes[key] = self._genome_from_survivor(s)
        return self._genomes[key]

    def _genome_from_survivor(self, s: Survivor) -> Genome | None:
        try:
            law = self.parse(s.formula, self.task.symbols, check_typos=False)
        except LawError:
            return None
        subs = {}
        for v in self.vars:
            if v.ratio_of:
                continue  # a ratio in a survivor reads back as its two variables
            sym = next(x for x in law.variables if x.name == v.symbol)
            subs[sym] = v.u * sp.Rational(repr(v.ref)) if v.ref != 1.0 else v.u
        expr = law.expr.xreplace(subs)
        specs: dict[str, ConstantSpec] = {}
        known = s.constant_specs or {}
        for c in law.constants:
            base = known.get(c.name)
            if base is None:
                base = AMPLITUDE if not (sp.diff(law.expr, c, 2) != 0) else EXPONENT
            init = s.constants.get(c.name, base.init)
            lo, hi = base.bounds
            if math.isfinite(init):
                init = min(max(init, lo), hi)
            else:
                init = base.init
            specs[c.name] = ConstantSpec(init=init, bounds=base.bounds)
        offset = None
        terms = list(sp.Add.make_args(expr))
        for t in terms:
            if t.is_Symbol and t.name in specs:
                offset = t
        if offset is not None:
            terms.remove(offset)
            offset_spec = specs.pop(offset.name)
            terms = [t.xreplace({offset: self.offset_symbol}) for t in terms]
            specs[OFFSET] = offset_spec
        if not terms:
            return None
        return Genome(terms, offset=offset is not None, specs=specs)

    # --- variation -------------------------------------------------------------------
    def mutate(self, g: Genome, rng: np.random.Generator) -> tuple[Genome, str]:
        names, specs = _Names(), dict(g.specs)
        names._ids = count(1000 + int(rng.integers(10**6)))
        terms = list(g.terms)
        offset = g.offset
        op = rng.choice(["replace", "add", "drop", "factor", "merge", "base_offset", "exp_depends", "swap_var",
                         "toggle_offset"], p=[0.17, 0.2, 0.12, 0.14, 0.07, 0.08, 0.07, 0.08, 0.07])
        i = int(rng.integers(len(terms)))
        if op == "replace":
            terms[i] = self._block(rng, names, specs)
        elif op == "add":
            terms.append(self._block(rng, names, specs))
        elif op == "drop" and len(terms) > 1:
            terms.pop(i)
        elif op == "factor":
            terms[i] = terms[i] * self._factor(rng, names, specs)
        elif op == "merge" and len(terms) > 1:
            j = (i + 1 + int(rng.integers(len(terms) - 1))) % len(terms)
            other = terms[j]
            amps = [a for a in sp.Mul.make_args(other) if a.is_Symbol and a.name in specs and a not in
                    {v.u for v in self.vars}]
            body = other.xreplace({amps[0]: 1}) if amps else other
            terms[i] = terms[i] * body
            terms.pop(j)
        elif op in ("base_offset", "exp_depends"):
            pows = [p for p in sp.preorder_traversal(terms[i]) if isinstance(p, sp.Pow) and p.base.is_Symbol
                    and p.base in {v.u for v in self.vars} and p.exp.free_symbols]
            if pows:
                p = pows[int(rng.integers(len(pows)))]
                if op == "base_offset":
                    repl = (p.base + names.new("b", BASE_OFFSET, specs)) ** p.exp
                else:
                    others = [v for v in self.vars if v.positive and v.u != p.base]
                    if not others:
                        return self.mutate(g, rng)
                    w = others[int(rng.integers(len(others)))]
                    repl = p.base ** (p.exp + names.new("q", ConstantSpec(init=0.0, bounds=(-2, 2)), specs)
                                      * sp.log(w.u))
                terms[i] = terms[i].xreplace({p: repl})
            else:
                terms[i] = terms[i] * self._factor(rng, names, specs)
        elif op == "swap_var" and len(self.vars) > 1:
            present = [v for v in self.vars if terms[i].has(v.u)]
            if present:
                a = present[int(rng.integers(len(present)))]
                options = [v for v in self.vars if v is not a and v.positive == a.positive]
                if options:
                    b = options[int(rng.integers(len(options)))]
                    terms[i] = terms[i].xreplace({a.u: b.u, b.u: a.u})
        else:
            offset = not offset
        return Genome(terms, offset, specs), f"mutate:{op}"

    def crossover(self, a: Genome, b: Genome, rng: np.random.Generator) -> Genome:
        take_a = [t for t in a.terms if rng.random() < 0.6] or [a.terms[int(rng.integers(len(a.terms)))]]
        take_b = [t for t in b.terms if rng.random() < 0.6] or [b.terms[int(rng.integers(len(b.terms)))]]
        # b's constants may share names with a's; rename b's apart
        rename = {sp.Symbol(n, real=True): sp.Symbol(f"x{n}", real=True) for n in b.specs if n != OFFSET}
        take_b = [t.xreplace(rename) for t in take_b]
        specs = dict(a.specs)
        specs.update({f"x{n}": s for n, s in b.specs.items() if n != OFFSET})
        if OFFSET in b.specs and OFFSET not in specs:
            specs[OFFSET] = b.specs[OFFSET]
        return Genome(take_a + take_b, offset=a.offset or b.offset, specs=specs)

    # --- rendering -----------------------------------------------------------------------
    def render(self, g: Genome) -> tuple[str, dict[str, ConstantSpec]] | None:
        """Genome -> formula text. Constants get readable names that never clash with a variable symbol, nor
        look like a typo of one (`R1` beside a variable `r1`; see discovery.laws.law.near_miss)."""
        expr = g.expr(self.offset_symbol)
        specs = {**g.specs, OFFSET: g.specs.get(OFFSET, self.offset_spec)}
        n_constants = sum(1 for s in expr.free_symbols if s.name in specs)
        if not n_constants or n_constants > self.limit:
            return None
        consts = [s for s in _first_appearance(expr) if s.name in specs]
        taken = set(self.task.symbols)
        counters: dict[str, int] = {}
        rename, out_specs = {}, {}
        for c in consts:
            role = self._readable_role(re.sub(r"^[x_]+", "", c.name).rstrip("0123456789") or "c")
            k = counters.get(role, 0)
            while True:
                new = role if (role == "E" and k == 0) else f"{role}{k}"
                k += 1
                if new not in taken and near_miss(new, self.task.symbols) is None:  # never read as a typo
                    break
            counters[role] = k
            taken.add(new)
            rename[c] = sp.Symbol(new, real=True)
            out_specs[new] = specs[c.name]
        variables = {v.u: self._written(v) for v in self.vars}
        return sp.sstr(expr.xreplace(rename).xreplace(variables)), out_specs

    @staticmethod
    def _written(v: ScaledVariable) -> sp.Expr:
        """A scaled variable as it appears in formula text: x / ref, or a ratio of two variables."""
        if v.ratio_of:
            top, bottom = (sp.Symbol(s, real=True) for s in v.ratio_of)
            return top / bottom
        x = sp.Symbol(v.symbol, real=True)
        return x / sp.Rational(repr(v.ref)) if v.ref != 1.0 else x

    def _readable_role(self, role: str) -> str:
        """A constant prefix that cannot be mistaken for a variable: rates are `r0, r1...` unless the task
        has variables named like that (domain shares r1..r5), then `R0, R1...`."""
        for prefix in (role, role.upper(), f"{role}_"):
            if not any(re.fullmatch(rf"{re.escape(prefix)}\d*", v) for v in self.task.symbols):
                return prefix
        return f"{role}_"

    # --- the proposer interface ------------------------------------------------------------
    def propose(self, contexts: list[ProposalContext]) -> list[Proposal]:
        return [self._propose_one(ctx) for ctx in contexts]

    def _propose_one(self, ctx: ProposalContext) -> Proposal:
        rng = np.random.default_rng(ctx.seed)
        basis = self.basis() if self.use_basis and ctx.generation == 0 and ctx.island == 0 else []
        genomes = [(s, self.genome_from_survivor(s)) for s in ctx.survivors]
        genomes = [(s, g) for s, g in genomes if g is not None]
        seen = set(ctx.seen_hashes)
        out: list[Candidate] = []
        tries = 0
        while len(out) < ctx.n and tries < ctx.n * MAX_TRIES:
            tries += 1
            parents: tuple[int, ...] = ()
            if basis:
                genome, op = basis.pop(0), "basis"
            elif not genomes or rng.random() < 0.1:
                genome, op = self.random_genome(rng), "random"
            elif len(genomes) > 1 and rng.random() < 0.25:
                i, j = rng.choice(len(genomes), size=2, replace=False)
                genome, op = self.crossover(genomes[i][1], genomes[j][1], rng), "crossover"
                parents = (genomes[i][0].id, genomes[j][0].id)
            else:
                # survivors arrive best first: bias towards the top
                i = int(min(rng.geometric(0.35) - 1, len(genomes) - 1))
                genome, op = self.mutate(genomes[i][1], rng)
                parents = (genomes[i][0].id,)
            rendered = self.render(genome)
            if rendered is None:
                continue
            text, specs = rendered
            try:
                law = self.parse(text, self.task.symbols, constants=list(specs), max_constants=self.task.constant_limit)
            except LawError:
                continue
            if law.hash in seen:
                continue
            seen.add(law.hash)
            if ctx.screen is not None and ctx.screen(law, specs):
                continue  # e.g. redundant constants: the campaign would reject it, so propose another
            out.append(Candidate(formula=text, constants=specs, parents=parents, proposer=self.name, operation=op))
        return Proposal(candidates=out)
