"""What an LLM call costs and may cost: prices, worst cases, sane usage, and secrets kept out of records.

The server's reported usage is untrusted like the rest of its reply: a count that is missing,
negative or larger than the request allows is replaced by a local count (a prompt cannot hold more
tokens than it has bytes, plus a few per message; a reply cannot exceed the request's max_tokens).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

# USD per 1M tokens (prompt, completion). List prices at the time of writing; `prices` entries are added to (and
# override) these. A dated model name ("gpt-4o-2024-08-06") uses the longest matching prefix.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}
MESSAGE_OVERHEAD = 16  # tokens a chat template may add per message (role markers, separators), generously
REQUEST_OVERHEAD = 16  # and per request (the assistant's priming)


def find_price(prices: dict[str, tuple[float, float]], model: str) -> tuple[float, float] | None:
    """(prompt, completion) USD per million tokens for `model` (exact name, else longest prefix), or None."""
    if model in prices:
        return prices[model]
    matches = [k for k in prices if model.startswith(k)]
    return prices[max(matches, key=len)] if matches else None


def unknown_price_message(model: str, max_cost_usd: float) -> str:
    return (f"--max-cost-usd {max_cost_usd:g} needs the price of model {model!r}, which Kepler does not know: give "
            f"--price-in and --price-out (USD per million prompt and completion tokens), or a [prices] table in the "
            f"campaign file (\"{model}\" = [prompt, completion])")


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """A local count of a prompt's tokens: ~3 characters per token errs high for English and code."""
    return sum(math.ceil(len(m["content"]) / 3) + 8 for m in messages)


def max_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """The most tokens a prompt can be billed for: a token holds at least one byte (byte-level BPE)."""
    return sum(len(m["content"].encode("utf-8")) + MESSAGE_OVERHEAD for m in messages) + REQUEST_OVERHEAD


def estimate_reply_tokens(text: str) -> int:
    return math.ceil(len(text) / 3)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    note: str = ""  # what was corrected, for the call's attempts


def _count(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return None


def sane_usage(reported_prompt, reported_completion, messages: list[dict[str, str]], reply: str,
               max_tokens: int) -> Usage:
    """Reported token counts, each replaced by the local count when missing or outside what is possible."""
    notes = []
    prompt, completion = _count(reported_prompt), _count(reported_completion)
    if prompt is None or prompt < 0 or prompt > max_prompt_tokens(messages):
        local = estimate_prompt_tokens(messages)
        notes.append(f"prompt_tokens {reported_prompt!r} replaced by the local count {local}")
        prompt = local
    if completion is None or completion < 0:
        local = min(estimate_reply_tokens(reply), max_tokens)
        notes.append(f"completion_tokens {reported_completion!r} replaced by the local count {local}")
        completion = local
    elif completion > max_tokens:
        notes.append(f"completion_tokens {completion} clamped to the request's max_tokens {max_tokens}")
        completion = max_tokens
    return Usage(prompt, completion, "; ".join(notes))


class Scrubber:
    """Removes an API key, bearer tokens and OpenAI-style keys from text before it is stored or printed."""

    _BEARER = re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+")
    _KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")

    def __init__(self, *secrets: str | None):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return self._KEY.sub("sk-[redacted]", self._BEARER.sub(r"\1 [redacted]", text))
