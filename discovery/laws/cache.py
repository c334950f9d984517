"""Parsed laws kept per process by their text: a campaign meets one formula in its proposer, its plan,
its survivors every generation and its final report, and parsing (canonical form included) costs about
as much as fitting a small law."""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

from discovery.laws.law import Law, LawError, parse_law

# Laws per process. A law compiled by SymEngine holds about 1 MB of LLVM code, so the cache is what bounds a
# campaign's memory: 8192 laws let a default data_constrained campaign peak at 1.6 GB and a long one grow towards
# 9 GB; 512 keep it at 0.5 GB with the same results. A campaign re-reads its survivors and the last generations'
# children, which an LRU of 512 keeps; an evicted law's compiled code is freed.
CACHE_SIZE = 512


@lru_cache(maxsize=CACHE_SIZE)
def _parse(text: str, variables: tuple[str, ...], constants: frozenset[str] | None, max_constants: int | None,
           check_typos: bool, hints: tuple[tuple[str, str], ...], engine: str) -> Law | LawError:
    try:
        law = parse_law(text, variables, constants=constants, max_constants=max_constants,
                        column_hints=dict(hints) or None, check_typos=check_typos)
    except LawError as exc:
        return exc
    return law.with_engine(engine)


def parse_cached(text: str, variables: Sequence[str], *, constants: Iterable[str] | None = None,
                 max_constants: int | None = None, column_hints: dict[str, str] | None = None,
                 check_typos: bool = True, engine: str = "symengine") -> Law:
    """`parse_law`, remembered: the same arguments give the same Law object (with its compiled functions) or
    raise the same refusal. Laws are immutable, so sharing one is safe.

    With declared constants, column hints only ever refuse a name that is itself a hinted column, so a law
    parsed without them whose constants are none of the hinted names is the law parsed with them: the
    proposer's parse (no hints) then serves the campaign's (with hints). Without declared constants the
    hints also feed the typo check (near misses of column names), and each call is parsed as asked.
    """
    key = (text, tuple(variables), None if constants is None else frozenset(constants), max_constants, check_typos)
    hints = tuple(sorted((column_hints or {}).items()))
    if hints and constants is not None:
        plain = _parse(*key, (), engine)
        if isinstance(plain, Law) and not any(c.name in column_hints for c in plain.constants):
            return plain
    out = _parse(*key, hints, engine)
    if isinstance(out, LawError):
        raise type(out)(*out.args)
    return out
