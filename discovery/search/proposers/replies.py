"""Reply parsing for the LLM proposer: model text -> validated Candidates and Rejections.

The model's text is untrusted. JSON is found (whole reply, code fences, or a balanced {...}/[...]
span inside prose), repaired when the damage is cosmetic (single quotes, trailing commas, Python's
True/False/None), validated with pydantic, and every formula goes through `parse_bounded` (the
allow-list of `parse_law`, within a time bound). Nothing is ever evaluated. Every failure becomes a
Rejection with a one-line reason, and one bad candidate never costs the others of its reply.

The same pydantic models also describe the reply to the server: `reply_json_schema()` is the JSON
schema sent as `response_format` (structured outputs), generated from `ReplyIn`/`CandidateIn`, with a
`pattern` on the formula that admits only characters the law parser can accept. The pattern only
steers generation; deciding what is a law stays with `parse_law`.
"""
from __future__ import annotations

import functools
import json
import math
import re
from typing import Any, Iterator

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from discovery.laws.guard import FormulaTimeout, parse_bounded
from discovery.laws.law import MAX_TEXT_LENGTH, LawError
from discovery.search.proposers.base import Candidate, Rejection
from discovery.tasks.spec import Task
from discovery.tasks.values import ConstantSpec

MAX_REPLY_CHARS = 200_000
MAX_SPANS_TRIED = 40
DEFAULT_INIT = 1.0
REPLY_EXCERPT = 200
RATIONALE_CHARS = 300  # kept of a rationale (and the most the JSON schema lets a model write)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", re.DOTALL)
_LHS = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*(\([A-Za-z0-9_,\s]*\))?\s*=(?!=)")
# Characters a formula may use (names, numbers with exponents, + - * / ** ^, parentheses, commas of
# Min(a, b), spaces). Sent in the JSON schema so a grammar-constrained server cannot emit anything else.
FORMULA_PATTERN = r"^[A-Za-z0-9_ .,+*/^()-]+$"
SCHEMA_NAME = "kepler_candidates"


class ReplyError(ValueError):
    """The reply holds no usable JSON; the message is one line."""


def one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- finding JSON ------------------------------------------------------------------------------------
def _bracket_scan(text: str, start: int) -> Iterator[tuple[int, int]]:
    """Yield (index, depth) at every bracket outside strings, from `start`; then (-1, open quote?)."""
    depth, quote, escape = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
            yield i, depth
        elif ch in "}]":
            depth -= 1
            yield i, depth
    yield -1, int(bool(quote))


def _balanced_span(text: str, start: int) -> str:
    """From an opening bracket to its matching close (strings respected); to the end if unclosed."""
    for i, depth in _bracket_scan(text, start):
        if i >= 0 and depth == 0:
            return text[start : i + 1]
    return text[start:]


def repair_json(text: str) -> str:
    """Fix cosmetic damage outside strings: 'single quotes', trailing commas, True/False/None."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':  # copy a double-quoted string verbatim
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
            continue
        if ch == "'":  # single-quoted string -> double-quoted
            j = i + 1
            buf: list[str] = []
            while j < n and text[j] != "'":
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    buf.append("'" if nxt == "'" else "\\" + nxt)
                    j += 2
                    continue
                buf.append('\\"' if text[j] == '"' else text[j])
                j += 1
            out.append('"' + "".join(buf) + '"')
            i = j + 1
            continue
        if ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "}]":
                i += 1  # trailing comma: drop it
                continue
        if ch.isascii() and (ch.isalpha() or ch == "_"):
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
            word = m.group(0)
            out.append({"True": "true", "False": "false", "None": "null"}.get(word, word))
            i += len(word)
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _loads(snippet: str) -> tuple[Any, str | None]:
    try:
        return json.loads(snippet), None
    except (ValueError, RecursionError) as exc:
        first_error = str(exc)
    try:
        return json.loads(repair_json(snippet)), None
    except (ValueError, RecursionError):
        return None, first_error


def _candidate_items(obj: Any) -> list[Any] | None:
    """The list of candidate entries in a parsed reply, or None if it does not look like one."""
    if isinstance(obj, list):
        return obj if all(isinstance(x, (dict, str)) for x in obj) else None
    if isinstance(obj, dict):
        for key in ("candidates", "laws", "formulas", "proposals"):
            if isinstance(obj.get(key), list):
                return obj[key]
        if "formula" in obj:
            return [obj]
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(x, dict) for x in lists[0]):
            return lists[0]
    return None


def _closed_span(text: str, start: int) -> str | None:
    """The bracketed span opening at `start` if it closes, else None."""
    span = _balanced_span(text, start)
    return span if _depth_closed(span) else None


def _depth_closed(span: str) -> bool:
    """True when the brackets of `span` (strings respected) all close by its end."""
    depth = 0
    for i, value in _bracket_scan(span, 0):
        if i < 0:
            return depth == 0 and not value
        depth = value
    return True


def _salvage(text: str) -> list[Any]:
    """The complete entries at the head of a candidates list that never closes (a reply cut at
    max_tokens): `{"candidates": [{...}, {...}, {"formula": "E +` gives the first two. A list that
    does close gives [] (its JSON is whole; the damage, if any, is elsewhere)."""
    m = re.search(r"[\"']candidates[\"']\s*:\s*\[", text)
    if m is not None:
        i = m.end()
    else:
        stripped = text.lstrip()
        if not stripped.startswith("["):
            return []
        i = len(text) - len(stripped) + 1
    items: list[Any] = []
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i < n and text[i] == "]":
            return []  # the list closed
        if i >= n or text[i] != "{":
            break
        span = _closed_span(text, i)
        if span is None:
            break
        obj, err = _loads(span)
        if err is not None or not isinstance(obj, dict):
            break
        items.append(obj)
        i += len(span)
    return items


def extract_candidates(text: str) -> list[Any]:
    """Candidate entries from a reply; ReplyError (one line) when there is no usable JSON."""
    return _extract(text)[0]


def _extract(text: str) -> tuple[list[Any], bool]:
    """(entries, broken): `broken` when the JSON broke off and only its complete head was kept."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyError("reply was empty")
    text = _THINK.sub("", text[:MAX_REPLY_CHARS]).strip().lstrip("\ufeff")
    whole = [text] + [m.group(2).strip() for m in _FENCE.finditer(text)]
    openers = [i for i, ch in enumerate(text) if ch in "{["][:MAX_SPANS_TRIED]
    spans = [_balanced_span(text, i) for i in openers]
    first_error = None
    parsed_but_wrong_shape = False
    seen: set[str] = set()
    # the whole reply and fenced blocks first, then a list cut short (keep its complete head), then any
    # balanced {...} / [...] inside prose
    for stage, snippets in (("whole", whole), ("spans", spans)):
        if stage == "spans" and first_error is not None:
            salvaged = _salvage(text)
            if salvaged:
                return salvaged, True
        for snippet in snippets:
            if not snippet or snippet in seen:
                continue
            seen.add(snippet)
            obj, err = _loads(snippet)
            if err is not None:
                first_error = first_error or err
                continue
            items = _candidate_items(obj)
            if items is not None:
                return items, False
            parsed_but_wrong_shape = True
    excerpt = one_line(text, REPLY_EXCERPT)
    if parsed_but_wrong_shape and first_error is None:
        raise ReplyError(f'reply JSON has no "candidates" list; reply: {excerpt!r}')
    raise ReplyError(f"reply was not valid JSON: {one_line(first_error or 'no JSON found', 120)}; reply: {excerpt!r}")


# ---- validating candidates -----------------------------------------------------------------------
class ConstantIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    init: float | None = Field(default=None, validation_alias=AliasChoices("init", "value", "initial", "guess"))
    bounds: tuple[float | None, float | None] | None = None


class CandidateIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # the pattern goes into the JSON schema sent to the server (it steers generation); it does not
    # validate here: parse_law does, with reasons the model can act on
    formula: str = Field(validation_alias=AliasChoices("formula", "expression", "law"),
                         json_schema_extra={"pattern": FORMULA_PATTERN, "minLength": 1, "maxLength": MAX_TEXT_LENGTH})
    constants: dict[str, ConstantIn] = Field(default_factory=dict)
    rationale: str = Field(default="", validation_alias=AliasChoices("rationale", "reason", "explanation"),
                           json_schema_extra={"maxLength": RATIONALE_CHARS})
    parents: list[int] = Field(default_factory=list)

    @field_validator("constants", mode="before")
    @classmethod
    def _normalise_constants(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, list):  # ["A", "B"] or [{"name": "A", "init": 1}, ...]
            out: dict[str, Any] = {}
            for item in v:
                if isinstance(item, str):
                    out[item] = {}
                elif isinstance(item, dict) and isinstance(item.get("name"), str):
                    out[item["name"]] = {k: x for k, x in item.items() if k != "name"}
                else:
                    raise ValueError("constants must be an object of name -> {init, bounds}")
            return out
        if isinstance(v, dict):
            return {k: ({"init": x} if isinstance(x, (int, float)) and not isinstance(x, bool)
                        else {} if x is None else x) for k, x in v.items()}
        return v

    @field_validator("rationale", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return "" if v is None else v if isinstance(v, str) else str(v)

    @field_validator("parents", mode="before")
    @classmethod
    def _parents(cls, v: Any) -> Any:
        if v is None:
            return []
        return [v] if isinstance(v, (int, str)) else v


def _pydantic_reason(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "candidate"
    return f"{where}: {err['msg']}"


def constant_spec(name: str, c: ConstantIn) -> ConstantSpec:
    """Defaults for a missing init, clamping of an init outside its bounds; ValueError on bad bounds."""
    lo, hi = c.bounds if c.bounds is not None else (None, None)
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        raise ValueError(f"constant {name!r}: bounds [{lo:g}, {hi:g}] need lower < upper")
    init = c.init
    if init is None or not math.isfinite(init):
        if lo <= DEFAULT_INIT <= hi:
            init = DEFAULT_INIT
        elif math.isfinite(lo) and math.isfinite(hi):
            init = (lo + hi) / 2
        elif math.isfinite(lo):
            init = lo + max(1.0, abs(lo))
        else:
            init = hi - max(1.0, abs(hi))
    init = min(max(init, lo), hi)  # clamp into the bounds
    return ConstantSpec(init=init, bounds=(lo, hi))


def strip_lhs(formula: str) -> str:
    """`L = E + A/N**a` or `L(N, D) = ...` -> the right-hand side; anything else unchanged."""
    m = _LHS.match(formula)
    return formula[m.end():].strip() if m else formula.strip()


def validate_items(
    items: list[Any],
    task: Task,
    *,
    max_candidates: int,
    known_parents: set[int] | frozenset[int] = frozenset(),
    seen_hashes: set[str] | None = None,
    evaluated_hashes: frozenset[str] | set[str] = frozenset(),
    proposer: str = "llm",
    timeouts: dict[str, str] | None = None,
) -> tuple[list[Candidate], list[Rejection]]:
    """Each entry -> a Candidate (parsed by the law parser) or a Rejection with the reason; one bad entry never
    costs the others. `timeouts` (formula -> reason) holds formulas known to overrun the parser's time bound:
    they are refused at once with that reason, and formulas that overrun it now are added."""
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    seen = seen_hashes if seen_hashes is not None else set()
    if not items:
        return [], [Rejection(formula="", reason="reply contained no candidates", proposer=proposer)]
    for k, raw in enumerate(items[: 4 * max_candidates + 4], start=1):
        if len(candidates) >= max_candidates:
            break
        try:
            out = _validate_one(k, raw, task, known_parents, seen, evaluated_hashes, proposer, timeouts)
        except Exception as exc:  # a bug of ours on one odd entry: that entry is refused, the rest go on
            text = raw.get("formula", "") if isinstance(raw, dict) else raw
            out = Rejection(one_line(text if isinstance(text, str) else "", 300),
                            one_line(f"candidate {k}: internal error: {type(exc).__name__}: {exc}", 300), proposer)
        (candidates if isinstance(out, Candidate) else rejections).append(out)
    return candidates, rejections


def _validate_one(k: int, raw: Any, task: Task, known_parents: set[int] | frozenset[int], seen: set[str],
                  evaluated_hashes: frozenset[str] | set[str], proposer: str,
                  timeouts: dict[str, str] | None) -> Candidate | Rejection:
    symbols = task.symbols
    if isinstance(raw, str):
        raw = {"formula": raw}
    formula_text = raw.get("formula", raw.get("expression", "")) if isinstance(raw, dict) else ""
    formula_text = formula_text if isinstance(formula_text, str) else ""
    try:
        item = CandidateIn.model_validate(raw)
    except ValidationError as exc:
        return Rejection(one_line(formula_text, 300), f"candidate {k}: {_pydantic_reason(exc)}", proposer)
    formula = strip_lhs(item.formula)
    clash = sorted(set(item.constants) & set(symbols))
    if clash:
        return Rejection(formula, f"constants {clash} clash with variable symbols", proposer)
    if timeouts is not None and formula in timeouts:
        return Rejection(formula, timeouts[formula], proposer)
    try:
        # Declared constants are binding (a typo'd variable is then caught); a reply that declares none
        # gets every non-variable name as a constant with default init.
        law = parse_bounded(formula, symbols, constants=list(item.constants) or None,
                            max_constants=task.constant_limit, column_hints=task.symbol_for_column())
    except FormulaTimeout as exc:
        if timeouts is not None:
            timeouts[formula] = str(exc)
        return Rejection(formula, str(exc), proposer)
    except LawError as exc:
        return Rejection(formula, str(exc), proposer)
    try:
        specs = {name: constant_spec(name, item.constants[name]) for name in law.constant_names
                 if name in item.constants}
    except ValueError as exc:
        return Rejection(formula, one_line(str(exc), 200), proposer)
    if law.hash in evaluated_hashes:
        return Rejection(formula, f"already evaluated in this run ({law.canonical}); propose something new", proposer)
    if law.hash in seen:
        return Rejection(formula, f"duplicate of an earlier candidate ({law.canonical})", proposer)
    seen.add(law.hash)
    return Candidate(
        formula=law.text,
        constants=specs,
        rationale=one_line(item.rationale, RATIONALE_CHARS),
        parents=tuple(dict.fromkeys(p for p in item.parents if p in known_parents)),
        proposer=proposer,
        operation="llm",
    )


def parse_reply(
    text: str,
    task: Task,
    *,
    max_candidates: int,
    known_parents: set[int] | frozenset[int] = frozenset(),
    seen_hashes: set[str] | None = None,
    evaluated_hashes: frozenset[str] | set[str] = frozenset(),
    proposer: str = "llm",
    timeouts: dict[str, str] | None = None,
) -> tuple[list[Candidate], list[Rejection]]:
    """Reply text -> (candidates, rejections). Never raises on bad model output. `timeouts`: see validate_items."""
    try:
        items, broken = _extract(text)
    except ReplyError as exc:
        return [], [Rejection(formula="", reason=str(exc), proposer=proposer)]
    candidates, rejections = validate_items(items, task, max_candidates=max_candidates, known_parents=known_parents,
                                            seen_hashes=seen_hashes, evaluated_hashes=evaluated_hashes,
                                            proposer=proposer, timeouts=timeouts)
    if broken:
        rejections.append(Rejection(formula="", reason=(f"reply JSON broke off after {len(items)} complete "
                                                        "candidate(s); the rest was lost"), proposer=proposer))
    return candidates, rejections


# ---- the schema sent to the server -----------------------------------------------------------------
class ReplyIn(BaseModel):
    """A whole reply: `{"candidates": [...]}`. Validation goes entry by entry (validate_items), so one
    bad entry never sinks the others; this model exists to generate the JSON schema."""

    model_config = ConfigDict(extra="ignore")

    candidates: list[CandidateIn]


def _tighten(node: Any) -> Any:
    """Drop pydantic's titles, descriptions and defaults; close every object to the properties it names."""
    if isinstance(node, list):
        return [_tighten(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "description", "default"):
            continue
        if key in ("properties", "$defs"):  # maps of names to schemas: the names are not keywords
            out[key] = {name: _tighten(sub) for name, sub in value.items()}
        else:
            out[key] = _tighten(value)
    if out.get("type") == "object" and "properties" in out:
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=1)
def _base_schema() -> str:
    return json.dumps(_tighten(ReplyIn.model_json_schema(mode="validation", by_alias=True)))


def reply_json_schema(max_candidates: int | None = None) -> dict[str, Any]:
    """The JSON schema of a reply, generated from the pydantic models that validate replies.

    Every candidate must carry formula, constants and rationale (the validator is lenient about missing
    ones; a schema is a chance to ask for them), the formula matches FORMULA_PATTERN, objects admit no
    other keys (except the constants map, keyed by the model's own names), and the list holds 1 to
    `max_candidates` entries. It is not OpenAI-"strict" (a map of named constants cannot be), so servers
    that enforce it (llama.cpp, vLLM, Ollama) do, and OpenAI takes it as guidance.
    """
    schema = json.loads(_base_schema())
    cand = schema["$defs"]["CandidateIn"]
    cand["required"] = ["formula", "constants", "rationale"]
    items = schema["properties"]["candidates"]
    items["minItems"] = 1
    if max_candidates:
        items["maxItems"] = int(max_candidates)
    return schema


def response_format(kind: str, max_candidates: int | None = None) -> dict[str, Any] | None:
    """The `response_format` request field for json_schema | json_object | text (None: not sent)."""
    if kind == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "schema": reply_json_schema(max_candidates)}}
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "text":
        return None
    raise ValueError(f"unknown response format {kind!r}: json_schema | json_object | text")
