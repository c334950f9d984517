"""What every proposer takes and returns. A proposer only suggests text; the law parser decides."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from discovery.tasks.spec import Task
from discovery.tasks.values import ConstantSpec

if TYPE_CHECKING:
    from discovery.laws.law import Law


class BudgetExhausted(Exception):
    """A proposer's budget (LLM calls, tokens, dollars) is used up; the campaign stops cleanly."""


@dataclass
class Candidate:
    formula: str
    constants: dict[str, ConstantSpec] | None = None  # initial values and bounds, when the proposer gives them
    rationale: str = ""
    parents: tuple[int, ...] = ()  # candidate ids in the store
    proposer: str = "offline"
    operation: str = ""  # e.g. "mutate:add_term", "crossover", "llm"


@dataclass
class Rejection:
    """A suggestion that never became a law (unparsable reply, unknown variable, ...), with its reason."""

    formula: str
    reason: str
    proposer: str = "offline"


@dataclass
class Survivor:
    """What a proposer sees of a member of the population (validation numbers only, never test)."""

    id: int
    formula: str
    canonical: str
    complexity: int
    n_constants: int
    val_r2: float
    val_nmse: float
    constants: dict[str, float] = field(default_factory=dict)  # fitted constants of one representative group
    constant_specs: dict[str, ConstantSpec] | None = None
    shape: str | None = None  # the task's shape prior this law breaks, if any


@dataclass
class ProposalContext:
    task: Task
    generation: int
    island: int
    n: int  # how many candidates are wanted
    seed: int  # derived from the campaign seed, generation and island: never from the clock
    survivors: list[Survivor] = field(default_factory=list)  # best first
    rejections: list[Rejection] = field(default_factory=list)  # recent ones, newest last
    residuals: str = ""  # where the best law errs, in words and numbers
    data_summary: str = ""
    seen_hashes: frozenset[str] = frozenset()  # laws already evaluated in this run (no need to propose again)
    # why the campaign would reject a parsed law before fitting it (e.g. redundant constants), or None
    screen: Callable[["Law", dict[str, ConstantSpec] | None], str | None] | None = None
    deadline: float | None = None  # time.monotonic() at which the campaign's time limit is reached


@dataclass
class LLMCall:
    request_hash: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_usd: float
    cached: bool
    status: str  # ok | error:<kind>
    response_text: str = ""
    attempts: list[str] = field(default_factory=list)  # one line per HTTP attempt, in order (retries included)
    seed: int | None = None  # the seed sent to the API
    error: str = ""  # the final error, in one line, when status is not ok
    finish_reason: str = ""  # stop | length | ... as reported by the API
    response_format: str = ""  # json_schema | json_object | text: what this call asked the server for


class CallLedger(Protocol):
    """Where a proposer records its LLM calls as they happen (the campaign's store): a request is charged its
    worst case when sent and settled when it ends, so a kill never leaves a paid call uncounted."""

    def llm_call(self, generation: int, island: int, request_hash: str) -> Any: ...

    def llm_sent(self, generation: int, island: int, request_hash: str, model: str, tokens: int,
                 cost_usd: float) -> None: ...

    def llm_settled(self, generation: int, island: int, call: "LLMCall", tokens: int, cost_usd: float) -> None: ...

    def llm_unsettled(self) -> list: ...

    def llm_usage(self) -> dict: ...


@dataclass
class Proposal:
    candidates: list[Candidate] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    calls: list[LLMCall] = field(default_factory=list)


class Proposer(ABC):
    name: str = "base"

    @abstractmethod
    def propose(self, contexts: list[ProposalContext]) -> list[Proposal]:
        """One Proposal per context (one context per island); may work on them concurrently."""
