"""Selection: islands with elitism, tournaments and periodic migration; a Pareto front.

Pure logic over validation numbers: persistence lives in the store, and no test number ever
reaches this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A unit of complexity must buy this share of validation NMSE. Relative, so it weighs the same on a task
# fitted to NMSE 1e-4 (where an absolute penalty would swamp real gains) as on one fitted to 0.3.
PARSIMONY = 0.005


@dataclass(frozen=True)
class Member:
    id: int
    hash: str
    val_nmse: float
    complexity: int
    shape_ok: bool = True  # keeps the task's shape priors (see discovery.laws.shape)

    @property
    def fitness(self) -> float:
        """Lower is better: validation NMSE with a light relative penalty on size; failures are worst."""
        if not math.isfinite(self.val_nmse):
            return math.inf
        return self.val_nmse * (1 + PARSIMONY * self.complexity)

    @property
    def rank(self) -> tuple[bool, float, int]:
        """Selection order: laws that keep the shape priors first, then fitness, then age."""
        return (not self.shape_ok, self.fitness, self.id)


def pareto_front(members: list[Member]) -> list[Member]:
    """Members not beaten on both validation error and complexity, sorted by complexity.

    Only laws that keep the shape priors compete, unless none does."""
    members = [m for m in members if m.shape_ok] or members
    ok = sorted((m for m in members if math.isfinite(m.val_nmse)), key=lambda m: (m.complexity, m.val_nmse, m.id))
    front: list[Member] = []
    best = math.inf
    for m in ok:
        if m.val_nmse < best:
            front.append(m)
            best = m.val_nmse
    return front


class Population:
    def __init__(self, n_islands: int, size: int, *, elite: int = 2, tournament: int = 3,
                 migration_interval: int = 3, migrants: int = 1):
        self.islands: list[list[Member]] = [[] for _ in range(n_islands)]
        self.size = size
        self.elite = elite
        self.tournament = tournament
        self.migration_interval = migration_interval
        self.migrants = migrants

    def best(self) -> Member | None:
        everyone = [m for isl in self.islands for m in isl]
        return min(everyone, key=lambda m: m.rank) if everyone else None

    def ranked(self, island: int) -> list[Member]:
        return sorted(self.islands[island], key=lambda m: m.rank)

    def parents(self, island: int, k: int, rng: np.random.Generator) -> list[Member]:
        """k tournament winners (with replacement across tournaments)."""
        pool = [m for m in self.islands[island] if math.isfinite(m.fitness)]
        if not pool:
            return []
        out = []
        for _ in range(k):
            picks = rng.choice(len(pool), size=min(self.tournament, len(pool)), replace=False)
            out.append(min((pool[i] for i in picks), key=lambda m: m.rank))
        return out

    def admit(self, island: int, newcomers: list[Member], rng: np.random.Generator) -> None:
        """Merge newcomers, drop duplicate laws, keep the elite and fill the rest by tournament."""
        seen: set[str] = set()
        pool: list[Member] = []
        for m in sorted(self.islands[island] + newcomers, key=lambda m: m.rank):
            if m.hash not in seen:
                seen.add(m.hash)
                pool.append(m)
        if len(pool) <= self.size:
            self.islands[island] = pool
            return
        keep = pool[: self.elite]
        rest = pool[self.elite:]
        while len(keep) < self.size and rest:
            picks = rng.choice(len(rest), size=min(self.tournament, len(rest)), replace=False)
            winner = min(picks, key=lambda i: rest[i].rank)
            keep.append(rest.pop(int(winner)))
        self.islands[island] = sorted(keep, key=lambda m: m.rank)

    def migrate(self, generation: int) -> None:
        """Every few generations each island sends copies of its best to the next island (a ring)."""
        n = len(self.islands)
        if n < 2 or self.migration_interval <= 0 or (generation + 1) % self.migration_interval:
            return
        outgoing = [self.ranked(i)[: self.migrants] for i in range(n)]
        for i in range(n):
            target = self.islands[(i + 1) % n]
            hashes = {m.hash for m in target}
            target.extend(m for m in outgoing[i] if m.hash not in hashes)

    def snapshot(self) -> list[list[int]]:
        return [[m.id for m in isl] for isl in self.islands]

    def restore(self, snapshot: list[list[int]], members: dict[int, Member]) -> None:
        self.islands = [[members[i] for i in isl if i in members] for isl in snapshot]
