"""Mixed proposing: an LLM and the offline grammar feed one population (the grammar alone, once the LLM
is known not to answer)."""
from __future__ import annotations

from dataclasses import replace

from discovery.search.proposers.base import Proposal, ProposalContext, Proposer


class MixedProposer(Proposer):
    name = "mixed"

    def __init__(self, llm: Proposer, offline: Proposer):
        self.llm = llm
        self.offline = offline
        self.offline_only = False  # set by the campaign when the LLM has never answered: all slots go offline

    def attach_ledger(self, ledger) -> None:
        """The LLM part records its calls in the campaign's store (see LLMProposer.attach_ledger)."""
        if hasattr(self.llm, "attach_ledger"):
            self.llm.attach_ledger(ledger)

    def propose(self, contexts: list[ProposalContext]) -> list[Proposal]:
        if self.offline_only:
            return self.offline.propose(contexts)
        llm_ctx = [replace(c, n=max(1, c.n // 2)) for c in contexts]
        off_ctx = [replace(c, n=c.n - max(1, c.n // 2)) for c in contexts]
        from_llm = self.llm.propose(llm_ctx)
        from_offline = self.offline.propose(off_ctx)
        return [Proposal(candidates=a.candidates + b.candidates, rejections=a.rejections + b.rejections,
                         calls=a.calls + b.calls) for a, b in zip(from_llm, from_offline, strict=True)]
