"""The LLM proposer: asks an OpenAI-compatible chat model for candidate laws.

One propose() call turns each context into one or more chat requests (candidates_per_call at a
time), runs them concurrently (asyncio, so any request can be cancelled at once: by its time bound,
the campaign's deadline or Ctrl-C), and turns the replies into Candidates (validated by the law
parser) and Rejections. Around the HTTP call:

- one request is bounded as a whole, connect and read (timeout_s): a server that trickles its reply
  byte by byte is cut off like a silent one;
- retries with exponential backoff and jitter from a seeded RNG (never the clock) on 429, 5xx,
  timeouts and connection errors, honouring Retry-After (capped); other 4xx are final; nothing is
  started or retried past the campaign's deadline (ProposalContext.deadline);
- a response cache (one JSON file per request hash in cache_dir) so a run can be replayed without
  the service (replay_only=True: cache hits only, a miss is an error and never a network call);
- budgets (calls, tokens, dollars) checked before a call starts, against a worst-case reservation
  (every byte of the prompt a token, plus max_tokens), decided for the whole batch up front in a
  fixed order so the admitted calls do not depend on timing. A batch that only partly fits runs what
  fits and returns it; the next propose() raises BudgetExhausted. A dollar budget needs the model's
  price: an unknown one is refused up front;
- with a ledger (the campaign's store, `attach_ledger`), every request is written, charged at its
  worst case, before it is sent, and settled when it ends: a run killed at any moment resumes with
  every request charged that it may have paid for (replies that arrived settle from the cache);
- the usage a server reports is checked (accounting.sane_usage) before it is counted;
- the API key, and any bearer token, is scrubbed from everything recorded or logged.

Cache hits count towards the budgets with the usage and cost they had when recorded (so a replay
stops where the original run stopped), but are reported with cost_usd = 0 (nothing was paid); a
resumed run's own calls, found in its ledger, are not counted twice.

Structured outputs (`structured`): "auto" sends the reply schema as `response_format` of type
json_schema (replies.reply_json_schema, from the pydantic models that validate replies). A server that
refuses it (HTTP 400/422, or any error naming response_format / the schema) gets the same request again
with {"type": "json_object"}, and if that is refused too, as plain text (the reply parser extracts the
JSON). The step down happens once: the proposer lives for the whole campaign and remembers the level
that worked, and until one call has succeeded, calls probe the server one at a time so a batch does not
hit the same refusal in parallel. "schema", "json" and "off" force json_schema, json_object and text
(no fallback: a refusal is a failed call that says so). Every LLMCall records the level it used.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from discovery.search.proposers.accounting import (
    DEFAULT_PRICES,
    Scrubber,
    estimate_prompt_tokens,
    find_price,
    max_prompt_tokens,
    sane_usage,
    unknown_price_message,
)
from discovery.search.proposers.base import (
    BudgetExhausted,
    CallLedger,
    LLMCall,
    Proposal,
    ProposalContext,
    Proposer,
    Rejection,
)
from discovery.search.proposers.prompting import Templates, build_messages
from discovery.search.proposers.replies import one_line, parse_reply, reply_json_schema
from discovery.search.proposers.replies import response_format as format_field

log = logging.getLogger(__name__)

# Prices: accounting.DEFAULT_PRICES, plus `prices`. A model of unknown price (a local server) costs 0, and cannot be
# given a dollar budget.
LOCAL_DUMMY_KEY = "sk-local-no-key"
# Where from_settings() caches replies when the campaign names no llm_cache_dir: shared by runs (the
# key is the full request, so sharing is safe) and relative to the working directory, like results/.
DEFAULT_CACHE_DIR = Path("results") / "llm_cache"
CACHE_FORMAT = 1
STRUCTURED_MODES = ("auto", "schema", "json", "off")
# the response_format levels, from most to least constrained; `auto` steps down this list on refusal
FORMAT_LEVELS = ("json_schema", "json_object", "text")
_FIRST_LEVEL = {"auto": "json_schema", "schema": "json_schema", "json": "json_object", "off": "text"}
# an error message that is about the requested reply format (whatever its HTTP status)
_NAMES_FORMAT = re.compile(r"response_format|response format|json_schema|json schema|json_object|grammar|"
                           r"structured output|guided", re.IGNORECASE)
# a 400/422 that names something else is about that, not about the reply format: no fallback
_NAMES_OTHER = re.compile(r"\bmodels?\b|context|too long|max_tokens|max_completion_tokens|\btokens?\b|"
                          r"\bmessages?\b|api[ _-]?key|auth|\bseed\b|temperature|quota|billing", re.IGNORECASE)


def is_local_url(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    if host in ("localhost", "0.0.0.0") or host.endswith(".local") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def request_hash(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _derived_seed(seed: int, k: int) -> int:
    """Seed of the k-th request of a context: the context's own seed for k = 0."""
    if k == 0:
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def _split(n: int, per_call: int | None) -> list[int]:
    """n candidates over ceil(n / per_call) requests of near-equal size."""
    if n <= 0:
        return []
    calls = 1 if not per_call else math.ceil(n / per_call)
    base, extra = divmod(n, calls)
    return [base + (1 if i < extra else 0) for i in range(calls)]


@dataclass
class _Job:
    ctx_index: int
    ctx: ProposalContext
    n_ask: int
    seed: int
    messages: list[dict[str, str]]
    request: dict[str, Any]
    hash: str
    reserve_tokens: int = 0  # the worst case: every prompt byte a token, plus max_tokens
    reserve_cost: float = 0.0
    legacy_hash: str = ""  # the key this request had before structured outputs (cache entries recorded then)
    paid_before: bool = False  # a resumed run's own call: in its ledger, settled, its reply cached

    @property
    def where(self) -> tuple[int, int]:
        return self.ctx.generation, self.ctx.island


@dataclass
class _Totals:
    calls: int = 0  # started (cache hits included)
    cached_calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # actually paid (cache hits excluded)
    budget_cost_usd: float = 0.0  # paid + worst cases of unknown outcomes + the recorded cost of cache hits
    budget_tokens: int = 0  # the same, in tokens: what the token budget is checked against
    attempts: int = 0  # HTTP attempts (retries included)


@dataclass
class _Exchange:
    """What the HTTP part of a call gives back: the call, and how many of its attempts may have been billed
    without an answer saying so (timed out or cancelled after the request was sent)."""

    call: LLMCall
    unknown_attempts: int = 0
    notes: list[str] = field(default_factory=list)


class LLMProposer(Proposer):
    name = "llm"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float | None = 0.8,
        max_tokens: int = 2048,
        candidates_per_call: int | None = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        concurrency: int = 4,
        max_calls: int | None = None,
        max_total_tokens: int | None = None,
        max_cost_usd: float | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
        cache_dir: str | Path | None = None,
        replay_only: bool = False,
        prompts_dir: str | Path | None = None,
        retry_seed: int = 0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        retry_after_cap_s: float = 60.0,
        max_tokens_param: str = "max_tokens",
        max_survivors_shown: int = 8,
        max_rejections_shown: int = 10,
        structured: str = "auto",
    ):
        if candidates_per_call is not None and candidates_per_call < 1:
            raise ValueError("candidates_per_call must be >= 1 (or None: all of ctx.n in one request)")
        if concurrency < 1 or max_retries < 0 or max_tokens < 1 or timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0, max_tokens >= 1, timeout_s > 0")
        if replay_only and cache_dir is None:
            raise ValueError("replay_only=True needs a cache_dir to replay from")
        if structured not in STRUCTURED_MODES:
            raise ValueError(f"structured must be one of {', '.join(STRUCTURED_MODES)}, not {structured!r}")
        self.model = model
        self.base_url = base_url if base_url is not None else (os.environ.get("OPENAI_BASE_URL") or None)
        key = api_key if api_key is not None else (os.environ.get("OPENAI_API_KEY") or None)
        if key is None and is_local_url(self.base_url):
            key = LOCAL_DUMMY_KEY
        if key is None and not replay_only:
            raise ValueError("no API key: pass api_key or set OPENAI_API_KEY (a local base_url needs none)")
        self._api_key = key
        self.scrub = Scrubber(key)
        self.temperature = temperature
        self.max_tokens = int(max_tokens)
        self.candidates_per_call = candidates_per_call
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.max_calls = max_calls
        self.max_total_tokens = max_total_tokens
        self.max_cost_usd = max_cost_usd
        self.prices = {**DEFAULT_PRICES, **{k: (float(v[0]), float(v[1])) for k, v in (prices or {}).items()}}
        if max_cost_usd is not None and find_price(self.prices, model) is None:
            raise ValueError(unknown_price_message(model, max_cost_usd))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.replay_only = replay_only
        self.templates = Templates.load(prompts_dir)
        self.retry_seed = retry_seed
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_cap_s = retry_after_cap_s
        self.max_tokens_param = max_tokens_param
        self.max_survivors_shown = max_survivors_shown
        self.max_rejections_shown = max_rejections_shown
        self._totals = _Totals()
        self._lock = threading.Lock()
        self._ledger: CallLedger | None = None
        self._exhausted: str | None = None
        self.structured = structured
        self._format = _FIRST_LEVEL[structured]  # the level calls start at; `auto` may step it down
        self._format_confirmed = structured != "auto"  # auto: no call has succeeded yet at self._format
        self.format_fallbacks: list[str] = []  # one line per remembered step down, for logs and tests
        self.listener: Any = None  # called with one line per failed attempt (retried or final), as it happens
        if self.cache_dir is not None and not replay_only:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Any, task: Any = None, **overrides: Any) -> "LLMProposer":
        """Build from the campaign's settings (model, base_url, max_llm_calls, max_tokens = total token
        budget, max_cost_usd, prices, price_in/price_out, llm_timeout, llm_cache_dir, replay_only,
        structured); `overrides` win. KEPLER_LLM_MAX_REPLY_TOKENS caps each reply (max_tokens per
        request; default 2048)."""
        model = getattr(settings, "model", None) or os.environ.get("KEPLER_LLM_MODEL")
        if not model and "model" not in overrides:
            raise ValueError("the llm proposer needs a model name (--model, or KEPLER_LLM_MODEL)")
        cache_dir = getattr(settings, "llm_cache_dir", None) or os.environ.get("KEPLER_LLM_CACHE") or DEFAULT_CACHE_DIR
        kwargs: dict[str, Any] = dict(
            model=model,
            base_url=getattr(settings, "base_url", None),
            max_calls=getattr(settings, "max_llm_calls", None),
            max_total_tokens=getattr(settings, "max_tokens", None),
            max_cost_usd=getattr(settings, "max_cost_usd", None),
            timeout_s=getattr(settings, "llm_timeout", None) or 120.0,
            cache_dir=cache_dir,
            replay_only=bool(getattr(settings, "replay_only", False)),
            retry_seed=int(getattr(settings, "seed", 0) or 0),
            structured=getattr(settings, "structured", None) or "auto",
            prices=_settings_prices(settings, model),
        )
        reply_cap = os.environ.get("KEPLER_LLM_MAX_REPLY_TOKENS")
        if reply_cap:
            try:
                kwargs["max_tokens"] = int(reply_cap)
            except ValueError:
                raise ValueError(f"KEPLER_LLM_MAX_REPLY_TOKENS must be a whole number, not {reply_cap!r}") from None
        children = getattr(settings, "children", None)
        if children:
            kwargs["candidates_per_call"] = max(int(children), 1)
        kwargs.update(overrides)
        return cls(**kwargs)

    def add_previous_usage(self, calls: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0,
                           cost_usd: float = 0.0, **_ignored: Any) -> None:
        """Charge usage of an earlier session (a resumed run) against the budgets; accepts Store.llm_usage()."""
        with self._lock:
            t = self._totals
            t.calls += int(calls)
            t.prompt_tokens += int(prompt_tokens)
            t.completion_tokens += int(completion_tokens)
            t.cost_usd += float(cost_usd)
            t.budget_cost_usd += float(cost_usd)
            t.budget_tokens += int(prompt_tokens) + int(completion_tokens)

    def attach_ledger(self, ledger: CallLedger) -> None:
        """Record every call in `ledger` from now on, and take the run's usage from it. Requests a kill left in
        flight are settled first: from the reply cache when their reply had arrived (it was paid), else kept
        charged at their worst case (the server may have billed them)."""
        self._ledger = ledger
        for row in ledger.llm_unsettled():
            entry = self._cache_get(row["request_hash"])
            if entry is not None:
                p_tok, c_tok = int(entry.get("prompt_tokens") or 0), int(entry.get("completion_tokens") or 0)
                cost = self.cost(p_tok, c_tok)
                call = LLMCall(request_hash=row["request_hash"], model=row["model"] or self.model, prompt_tokens=p_tok,
                               completion_tokens=c_tok, latency_s=0.0, cost_usd=cost, cached=False, status="ok",
                               attempts=["the reply had arrived when the run stopped: settled from the reply cache"],
                               finish_reason=str(entry.get("finish_reason") or ""),
                               response_format=str(entry.get("response_format") or ""))
                ledger.llm_settled(row["generation"], row["island"], call, p_tok + c_tok, cost)
            else:
                call = LLMCall(request_hash=row["request_hash"], model=row["model"] or self.model, prompt_tokens=0,
                               completion_tokens=0, latency_s=0.0, cost_usd=0.0, cached=False, status="error:lost",
                               attempts=["in flight when the run stopped, no reply kept: charged at its worst case"],
                               error="the run stopped while this request was in flight; it stays charged at its "
                                     "worst case (the server may have billed it)")
                ledger.llm_settled(row["generation"], row["island"], call, int(row["charged_tokens"] or 0),
                                   float(row["charged_usd"] or 0.0))
        usage = ledger.llm_usage()
        with self._lock:
            t = self._totals
            t.calls = int(usage["calls"])
            t.cached_calls = int(usage["cached"])
            t.prompt_tokens, t.completion_tokens = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
            t.cost_usd = float(usage["cost_usd"])
            t.budget_cost_usd, t.budget_tokens = float(usage["charged_usd"]), int(usage["charged_tokens"])

    # ---- accounting -------------------------------------------------------------------------------
    def price(self, model: str | None = None) -> tuple[float, float]:
        return find_price(self.prices, model or self.model) or (0.0, 0.0)

    def cost(self, prompt_tokens: int, completion_tokens: int, model: str | None = None) -> float:
        p_in, p_out = self.price(model)
        return (prompt_tokens * p_in + completion_tokens * p_out) / 1e6

    @property
    def usage(self) -> dict[str, float]:
        with self._lock:
            t = self._totals
            return {
                "calls": t.calls, "cached_calls": t.cached_calls, "failed_calls": t.failed_calls,
                "attempts": t.attempts, "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
                "total_tokens": t.prompt_tokens + t.completion_tokens, "cost_usd": t.cost_usd,
                "budget_cost_usd": t.budget_cost_usd, "budget_tokens": t.budget_tokens,
            }

    @property
    def exhausted(self) -> str | None:
        """Why the budget is used up (the next propose() raises BudgetExhausted), or None."""
        return self._exhausted

    def _estimate_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return estimate_prompt_tokens(messages)

    def _admit(self, job: _Job, reserved: dict[str, float]) -> str | None:
        """Reserve the worst case of `job` in the budget; the reason if it does not fit."""
        t = self._totals
        if job.paid_before:  # a resumed run's own call, counted already: its reply comes from the cache
            return None
        tokens, cost = job.reserve_tokens, job.reserve_cost
        if self.max_calls is not None and t.calls + reserved["calls"] + 1 > self.max_calls:
            return f"LLM call budget used up ({self.max_calls} calls)"
        used_tokens = t.budget_tokens + reserved["tokens"]
        if self.max_total_tokens is not None and used_tokens + tokens > self.max_total_tokens:
            return (f"LLM token budget used up ({used_tokens} of {self.max_total_tokens} tokens spent or reserved; "
                    f"the next call may need {tokens})")
        used_cost = t.budget_cost_usd + reserved["cost"]
        if self.max_cost_usd is not None and used_cost + cost > self.max_cost_usd:
            return (f"LLM cost budget used up (${used_cost:.4f} of ${self.max_cost_usd:.4f} spent or reserved; "
                    f"the next call may cost ${cost:.4f})")
        reserved["calls"] += 1
        reserved["tokens"] += tokens
        reserved["cost"] += cost
        return None

    # ---- the request ------------------------------------------------------------------------------
    def _plan(self, contexts: list[ProposalContext]) -> list[_Job]:
        jobs = []
        for i, ctx in enumerate(contexts):
            for k, n_ask in enumerate(_split(ctx.n, self.candidates_per_call)):
                seed = _derived_seed(ctx.seed, k)
                messages = build_messages(ctx, n_ask, self.templates, max_survivors=self.max_survivors_shown,
                                          max_rejections=self.max_rejections_shown)
                request = {
                    "model": self.model,
                    "messages": messages,
                    "temperature": self.temperature,
                    "max_tokens": self.max_tokens,
                    "candidates_per_call": self.candidates_per_call,
                    "seed": seed,
                    # the mode, not the level: a replay must hit the same entries whatever level the live run
                    # had stepped down to by then (the entry records the level it was answered with)
                    "structured": self.structured,
                }
                if self.structured in ("auto", "schema"):
                    request["schema"] = reply_json_schema(n_ask)
                legacy = {k: v for k, v in request.items() if k not in ("structured", "schema")}
                worst = max_prompt_tokens(messages)
                job = _Job(i, ctx, n_ask, seed, messages, request, request_hash(request),
                           reserve_tokens=worst + self.max_tokens, reserve_cost=self.cost(worst, self.max_tokens),
                           legacy_hash=request_hash(legacy))
                job.paid_before = self._paid_before(job)
                jobs.append(job)
        return jobs

    def _paid_before(self, job: _Job) -> bool:
        """A call this run made before an interruption, settled with a reply that is in the cache."""
        if self._ledger is None:
            return False
        row = self._ledger.llm_call(*job.where, job.hash)
        return (row is not None and row["status"] == "ok" and not row["cached"]
                and self._cache_get(job.hash) is not None)

    def _make_client(self):
        from openai import AsyncOpenAI

        # the whole request is bounded by asyncio in _exchange; httpx's own timeout (between reads) is a backstop
        return AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout_s, max_retries=0)

    def close(self) -> None:
        """Nothing to release: each propose() opens and closes its own client."""

    # ---- cache --------------------------------------------------------------------------------------
    def _cache_path(self, h: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / f"{h}.json"

    def _cache_get(self, h: str) -> dict[str, Any] | None:
        if self.cache_dir is None:
            return None
        path = self._cache_path(h)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable LLM cache entry %s: %s", path, exc)
            return None
        if (not isinstance(entry, dict) or entry.get("request_hash") != h
                or not isinstance(entry.get("response_text"), str)):
            log.warning("ignoring malformed LLM cache entry %s", path)
            return None
        return entry

    def _cache_put(self, job: _Job, call: LLMCall) -> None:
        if self.cache_dir is None:
            return
        entry = {
            "format": CACHE_FORMAT,
            "request_hash": job.hash,
            "request": job.request,
            "response_text": call.response_text,
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "cost_usd": call.cost_usd,
            "finish_reason": call.finish_reason,
            "latency_s": call.latency_s,
            "response_format": call.response_format,
        }
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{job.hash[:16]}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(entry, f, ensure_ascii=False, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._cache_path(job.hash))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:  # a full disk must not lose the reply we already paid for
            log.warning("could not write LLM cache entry for %s: %s", job.hash, exc)

    def _remember_timeouts(self, h: str, timeouts: dict[str, str]) -> None:
        """Keep, in the reply's cache entry, the formulas that overran the parser's time bound: a resumed or
        replayed run refuses them at once, with the same reason, instead of timing out on them again."""
        if self.cache_dir is None or not timeouts:
            return
        entry = self._cache_get(h)
        if entry is None or entry.get("parse_timeouts") == timeouts:
            return
        entry["parse_timeouts"] = dict(timeouts)
        path = self._cache_path(h)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{h[:16]}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False, indent=1)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not note the parse timeouts in LLM cache entry %s: %s", h, exc)

    # ---- retries -------------------------------------------------------------------------------------
    def _retry_after(self, exc: Exception) -> float | None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        if headers is None:
            return None
        try:
            ms = headers.get("retry-after-ms")
            if ms is not None:
                return max(0.0, float(ms) / 1000)
            value = headers.get("retry-after")
            if value is None:
                return None
            try:
                return max(0.0, float(value))
            except ValueError:
                when = parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError, OverflowError):
            return None

    def _backoff(self, attempt: int, rng: random.Random, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
        return ceiling * (0.5 + 0.5 * rng.random())  # equal jitter

    # ---- structured outputs ----------------------------------------------------------------------------
    @property
    def current_format(self) -> str:
        """The response_format level the next call starts at: json_schema | json_object | text."""
        with self._lock:
            return self._format

    def _step_down(self, refused: str, to: str, why: str) -> None:
        """Remember for the rest of the campaign that the server refuses `refused`; never steps back up."""
        with self._lock:
            if FORMAT_LEVELS.index(to) <= FORMAT_LEVELS.index(self._format):
                return  # already there (another call got the same answer)
            self._format = to
            note = f"{refused} refused ({one_line(self.scrub(why), 200)}); using {to} for the rest of the campaign"
            self.format_fallbacks.append(note)
        log.warning("LLM server %s: %s", self.base_url or "(default)", note)

    def _confirm(self, level: str) -> None:
        with self._lock:
            self._format_confirmed = True
            if FORMAT_LEVELS.index(level) > FORMAT_LEVELS.index(self._format):
                self._format = level

    @staticmethod
    def _is_refusal(code: int, message: str) -> bool:
        """The server said no to the requested response_format, not to the request as such: an error that
        names the format (any status but 429), or a 400/422 that names nothing else ("Bad Request")."""
        message = message or ""
        if code == 429:
            return False
        if _NAMES_FORMAT.search(message):
            return True
        return code in (400, 422) and not _NAMES_OTHER.search(message)

    # ---- one call -----------------------------------------------------------------------------------
    def _cached_call(self, job: _Job, start: float) -> LLMCall | None:
        """The call answered from the cache, or None on a miss."""
        entry = self._cache_get(job.hash)
        legacy = False
        if entry is None and job.legacy_hash:  # recorded before structured outputs: asked as plain text
            entry = self._cache_get(job.legacy_hash)
            legacy = entry is not None
        if entry is None:
            return None
        level = "text" if legacy else str(entry.get("response_format") or "")
        if self.structured == "auto" and level in FORMAT_LEVELS and not legacy:
            self._confirm(level)  # a replay (or a resumed run) follows the live run's step-downs
        usage = sane_usage(entry.get("prompt_tokens"), entry.get("completion_tokens"), job.messages,
                           entry["response_text"], self.max_tokens)
        return LLMCall(
            request_hash=job.hash, model=self.model, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, latency_s=time.perf_counter() - start, cost_usd=0.0,
            cached=True, status="ok", response_text=self.scrub(entry["response_text"]), attempts=["cache hit"],
            seed=job.seed, finish_reason=str(entry.get("finish_reason") or ""), response_format=level,
        )

    async def _run(self, job: _Job, client, probe: asyncio.Lock, deadline: float | None) -> LLMCall:
        """Cache, else the API with retries, written to the ledger before it is sent and when it ends. Never
        raises for a failed call (it comes back as a status); a ledger that cannot be written stops the batch."""
        start = time.perf_counter()
        call = self._cached_call(job, start)
        if call is not None:
            if job.paid_before:  # this run's own call before an interruption: in the ledger and counted already
                return call
            tokens = call.prompt_tokens + call.completion_tokens
            charge = self.cost(call.prompt_tokens, call.completion_tokens)  # a replay stops where the run did
            self._settle(job, call, tokens, charge)
            return call
        if self.replay_only:
            msg = f"replay_only: no cached reply for request {job.hash[:16]} in {self.cache_dir}"
            log.warning(msg)
            call = LLMCall(request_hash=job.hash, model=self.model, prompt_tokens=0, completion_tokens=0,
                           latency_s=time.perf_counter() - start, cost_usd=0.0, cached=False,
                           status="error:replay_miss", attempts=["cache miss (replay_only)"], seed=job.seed, error=msg)
            self._settle(job, call, 0, 0.0)
            return call
        if self._ledger is not None:  # charged before it is sent: a kill from here on leaves it counted
            self._ledger.llm_sent(*job.where, job.hash, self.model, job.reserve_tokens, job.reserve_cost)
        try:
            if not self._format_confirmed:
                # auto, and no call has worked yet: probe the server one call at a time, so a refused schema is
                # refused once, not once per call of the first batch
                async with probe:
                    exchange = await self._exchange(job, client, start, deadline)
            else:
                exchange = await self._exchange(job, client, start, deadline)
        except Exception as exc:  # a bug of ours must not sink the batch
            log.error("LLM call %s failed unexpectedly: %s", job.hash[:16],
                      self.scrub(f"{type(exc).__name__}: {exc}"))
            exchange = _Exchange(LLMCall(
                request_hash=job.hash, model=self.model, prompt_tokens=0, completion_tokens=0,
                latency_s=time.perf_counter() - start, cost_usd=0.0, cached=False, status="error:internal",
                seed=job.seed, error=one_line(self.scrub(f"{type(exc).__name__}: {exc}"), 300)), unknown_attempts=1)
        call = exchange.call
        tokens = call.prompt_tokens + call.completion_tokens + exchange.unknown_attempts * job.reserve_tokens
        charge = call.cost_usd + exchange.unknown_attempts * job.reserve_cost
        self._settle(job, call, tokens, charge)
        return call

    def _settle(self, job: _Job, call: LLMCall, tokens: int, charge: float) -> None:
        """Count a finished call in the totals and the ledger (`tokens` and `charge`: what the budgets count)."""
        call.error = self.scrub(call.error)
        call.attempts = [self.scrub(a) for a in call.attempts]
        if self._ledger is not None:
            self._ledger.llm_settled(*job.where, call, tokens, charge)
        with self._lock:
            t = self._totals
            t.attempts += sum(1 for a in call.attempts if not a.startswith("cache"))
            t.prompt_tokens += call.prompt_tokens
            t.completion_tokens += call.completion_tokens
            t.cost_usd += call.cost_usd
            t.budget_cost_usd += charge
            t.budget_tokens += tokens
            if call.cached:
                t.cached_calls += 1
            if call.status != "ok":
                t.failed_calls += 1

    def _attempt_timeout(self, deadline: float | None) -> float:
        """Seconds the next attempt may take: the request's own bound, cut at the campaign's deadline."""
        left = math.inf if deadline is None else deadline - time.monotonic()
        return min(self.timeout_s, left)

    async def _exchange(self, job: _Job, client, start: float, deadline: float | None) -> _Exchange:
        """The HTTP part of a call: each attempt bounded as a whole, retries with backoff; in auto mode, steps
        down the response_format levels when the server refuses one."""
        import openai

        rng = random.Random(f"{self.retry_seed}:{job.hash}")
        attempts: list[str] = []
        kind, error = "unknown", ""
        level = first_level = self.current_format
        refused: list[str] = []  # levels this call saw refused
        refusal = ""
        attempt = 0
        unknown = 0  # attempts sent that ended without an answer (the server may have billed them)
        while True:
            t0 = time.perf_counter()
            retry_after = None
            bound = self._attempt_timeout(deadline)
            if bound <= 0:
                kind, error = "time_limit", "the campaign's time limit was reached before this request"
                attempts.append(f"error:{kind}: {error}")
                break
            try:
                kwargs: dict[str, Any] = {"model": self.model, "messages": job.messages, "seed": job.seed, "n": 1,
                                          self.max_tokens_param: self.max_tokens}
                if self.temperature is not None:
                    kwargs["temperature"] = self.temperature
                fmt = format_field(level, job.n_ask)
                if fmt is not None:
                    kwargs["response_format"] = fmt
                async with asyncio.timeout(bound):  # connect + the whole reply, however slowly it trickles in
                    response = await client.chat.completions.create(**kwargs)
            except (TimeoutError, openai.APITimeoutError):
                unknown += 1
                if bound < self.timeout_s:  # cut by the campaign's deadline, not by the request's own bound
                    kind, retryable, error = "time_limit", False, "the campaign's time limit was reached"
                else:
                    kind, retryable, error = "timeout", True, f"no complete reply within {self.timeout_s:g}s"
            except openai.APIConnectionError as exc:
                if not _never_sent(exc):
                    unknown += 1  # broken off after the request went out: it may have been billed
                kind, retryable, error = "connection", True, one_line(str(exc) or type(exc).__name__, 200)
            except openai.APIStatusError as exc:
                code = exc.status_code
                retry_after = self._retry_after(exc)
                error = one_line(self.scrub(f"HTTP {code}: {exc.message}"), 300)
                names_format = _NAMES_FORMAT.search(str(exc.message)) is not None
                if level != "text" and self.structured == "auto" and self._is_refusal(code, str(exc.message)):
                    took = time.perf_counter() - t0
                    lower = FORMAT_LEVELS[FORMAT_LEVELS.index(level) + 1]
                    attempts.append(f"error:format_refused after {took:.2f}s: {error}; {level} refused, trying {lower}")
                    refusal = error
                    refused.append(level)
                    if names_format:  # certain: remember at once
                        self._step_down(level, lower, error)
                    level = lower
                    continue  # not a retry: the same request in a form the server may take
                if level != "text" and names_format and code != 429:
                    kind, retryable = "format_refused", False
                    error = one_line(f"{error} (response_format {level} is forced by structured="
                                     f"{self.structured!r}; 'auto' would fall back)", 400)
                elif code == 429:
                    kind, retryable = "rate_limit", True
                elif code >= 500:
                    kind, retryable = "server", True
                else:
                    kind, retryable = f"http_{code}", False
            except Exception as exc:  # malformed response body, client bug, ...: do not retry blindly
                kind, retryable, error = "bad_response", False, one_line(f"{type(exc).__name__}: {exc}", 300)
            else:
                took = time.perf_counter() - t0
                try:
                    choice = response.choices[0]
                    text = self.scrub(choice.message.content or "")
                    finish = str(choice.finish_reason or "")
                except (AttributeError, IndexError, TypeError) as exc:
                    attempts.append(f"error:bad_response after {took:.2f}s")
                    kind, error = "bad_response", f"reply had no message: {type(exc).__name__}"
                    break
                if level != first_level:  # a lower level worked where the higher was refused: remember it
                    self._step_down(" and ".join(refused), level, refusal)
                self._confirm(level)
                reported = getattr(response, "usage", None)
                usage = sane_usage(getattr(reported, "prompt_tokens", None),
                                   getattr(reported, "completion_tokens", None), job.messages, text, self.max_tokens)
                attempts.append(f"ok after {took:.2f}s" + (f" ({usage.note})" if usage.note else ""))
                call = LLMCall(
                    request_hash=job.hash, model=self.model, prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens, latency_s=time.perf_counter() - start,
                    cost_usd=self.cost(usage.prompt_tokens, usage.completion_tokens), cached=False, status="ok",
                    response_text=text, attempts=attempts, seed=job.seed, finish_reason=finish, response_format=level,
                )
                self._cache_put(job, call)
                return _Exchange(call, unknown)
            took = time.perf_counter() - t0
            error = self.scrub(error)
            if not retryable or attempt == self.max_retries:
                attempts.append(f"error:{kind} after {took:.2f}s: {error}")
                self._tell(f"LLM call failed ({kind}): {error}")
                break
            delay = self._backoff(attempt, rng, retry_after)
            if deadline is not None and time.monotonic() + delay >= deadline:
                attempts.append(f"error:{kind} after {took:.2f}s: {error}; no retry: the campaign's time limit "
                                "comes first")
                break
            attempts.append(f"error:{kind} after {took:.2f}s: {error}; retrying in {delay:.2f}s")
            self._tell(f"LLM {kind}: {error}; retrying in {delay:.1f}s")
            await asyncio.sleep(delay)
            attempt += 1
        call = LLMCall(request_hash=job.hash, model=self.model, prompt_tokens=0, completion_tokens=0,
                       latency_s=time.perf_counter() - start, cost_usd=0.0, cached=False, status=f"error:{kind}",
                       attempts=attempts, seed=job.seed, error=error, response_format=level)
        return _Exchange(call, unknown)

    def _tell(self, line: str) -> None:
        if self.listener is not None:
            try:
                self.listener(self.scrub(line))
            except Exception:  # a display problem must not fail the call
                log.exception("LLM listener failed")

    async def _run_all(self, jobs: list[_Job], deadline: float | None) -> list[LLMCall]:
        client = self._make_client()
        probe = asyncio.Lock()
        limit = asyncio.Semaphore(self.concurrency)

        async def one(job: _Job) -> LLMCall:
            async with limit:
                return await self._run(job, client, probe, deadline)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(job)) for job in jobs]
        except BaseExceptionGroup as eg:  # a ledger that cannot be written (full disk): that error, as it is
            raise eg.exceptions[0] from None
        finally:
            await client.close()
        return [t.result() for t in tasks]

    def _calls(self, jobs: list[_Job], deadline: float | None) -> list[LLMCall]:
        """Run the batch to the end. In this thread when it runs no event loop (Ctrl-C then cancels every request
        at once), else in a helper thread (a notebook's loop)."""
        if not jobs:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._run_all(jobs, deadline))
        out: dict[str, Any] = {}

        def target() -> None:
            try:
                out["calls"] = asyncio.run(self._run_all(jobs, deadline))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                out["error"] = exc

        thread = threading.Thread(target=target, daemon=True, name="llm-proposer")
        thread.start()
        thread.join()
        if "error" in out:
            raise out["error"]
        return out["calls"]

    # ---- the interface ------------------------------------------------------------------------------
    def propose(self, contexts: list[ProposalContext]) -> list[Proposal]:
        if self._exhausted:
            raise BudgetExhausted(self._exhausted)
        jobs = self._plan(contexts)
        admitted: list[_Job] = []
        with self._lock:
            reserved = {"calls": 0.0, "tokens": 0.0, "cost": 0.0}
            for job in jobs:  # in a fixed order, before anything runs: deterministic under concurrency
                reason = self._admit(job, reserved)
                if reason is not None:
                    self._exhausted = reason
                    break
                admitted.append(job)
            self._totals.calls += sum(1 for job in admitted if not job.paid_before)
        if jobs and not admitted:
            raise BudgetExhausted(self._exhausted)
        if self._exhausted:
            log.warning("%s: running %d of %d requested LLM calls", self._exhausted, len(admitted), len(jobs))
        deadlines = [c.deadline for c in contexts if c.deadline is not None]
        deadline = min(deadlines) if deadlines else None
        calls = self._calls(admitted, deadline)

        proposals = [Proposal() for _ in contexts]
        seen: list[set[str]] = [set() for _ in contexts]
        for job, call in zip(admitted, calls, strict=True):  # in job order, whatever order the replies came in
            proposal = proposals[job.ctx_index]
            proposal.calls.append(call)
            if call.status != "ok":
                continue
            if deadline is not None and time.monotonic() > deadline:
                continue  # out of time: the campaign drops this generation, no need to parse the rest
            known = {s.id for s in job.ctx.survivors}
            entry = self._cache_get(job.hash) or {}
            timeouts = dict(entry.get("parse_timeouts") or {})
            before = dict(timeouts)
            try:
                cands, rejs = parse_reply(call.response_text, job.ctx.task, max_candidates=job.n_ask,
                                          known_parents=known, seen_hashes=seen[job.ctx_index],
                                          evaluated_hashes=getattr(job.ctx, "seen_hashes", frozenset()) or frozenset(),
                                          proposer=self.name, timeouts=timeouts)
            except Exception as exc:  # never lose the batch over one reply
                log.exception("parsing LLM reply %s failed unexpectedly", call.request_hash[:16])
                cands, rejs = [], []
                rejs.append(Rejection("", one_line(f"internal error parsing the reply: {exc}", 200), self.name))
            if timeouts != before:
                self._remember_timeouts(job.hash, timeouts)
            if call.finish_reason == "length" and not cands:
                for r in rejs:
                    r.reason = one_line(r.reason + f" (the reply was cut at max_tokens={self.max_tokens})", 400)
            proposal.candidates.extend(cands)
            proposal.rejections.extend(rejs)
        return proposals


def _never_sent(exc: Exception) -> bool:
    """A connection error from before the request went out (refused, unreachable): nothing can be billed."""
    cause = exc.__cause__
    return isinstance(cause, ConnectionRefusedError) or "connect" in type(cause).__name__.lower()


def _settings_prices(settings: Any, model: str | None) -> dict[str, tuple[float, float]]:
    """The campaign's price table ([prices]), with --price-in/--price-out for its model on top."""
    prices = {k: (float(v[0]), float(v[1])) for k, v in (getattr(settings, "prices", None) or {}).items()}
    price_in, price_out = getattr(settings, "price_in", None), getattr(settings, "price_out", None)
    if (price_in is None) != (price_out is None):
        raise ValueError("give both --price-in and --price-out (USD per million prompt and completion tokens)")
    if price_in is not None and model:
        prices[model] = (float(price_in), float(price_out))
    return prices
