"""The fold plan: which processes train which fold, in rounds, so that no process idles while
work remains.

A round trains m folds at once, each on its own group of processes (the N processes split into
m groups of near-equal size); a group of more than one trains its fold data-parallel. The plan
is the sequence of rounds with the least predicted wall time, where a fold on g processes takes
`fold_time(g)` fold-times: 1/g at perfect scaling, discounted by DP_EFFICIENCY per doubling of
g (an assumption; `benchmarks/scaling.py` measures it). Ties go to the plan with fewer
processes in groups. 2 processes x 5 folds: folds 0-3 two at a time, then fold 4 on both;
4 x 5: folds 0-3, then fold 4 on all four; 10 x 5: every fold on a pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

# Data-parallel efficiency kept per doubling of a fold's group (0.9: a pair runs a fold in
# 1 / (2 x 0.9) of its one-process time). Only ranks plans; the benchmark reports the real one.
DP_EFFICIENCY = 0.9


@dataclass(frozen=True)
class Group:
    """One fold and the global ranks that train it (data-parallel when more than one)."""

    fold: int
    ranks: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.ranks)


@dataclass(frozen=True)
class FoldPlan:
    """Rounds of groups over `processes` processes; each rank is in at most one group a round."""

    processes: int
    rounds: tuple[tuple[Group, ...], ...]
    efficiency: float = DP_EFFICIENCY

    def for_rank(self, rank: int) -> list[Group]:
        """The groups `rank` takes part in, in order."""
        return [g for r in self.rounds for g in r if rank in g.ranks]

    @property
    def groups(self) -> list[Group]:
        return [g for r in self.rounds for g in r]

    def wall(self, efficiency: float | None = None) -> float:
        """Predicted wall time in one-process fold-times (each round lasts as long as its slowest group)."""
        e = self.efficiency if efficiency is None else efficiency
        return sum(max(fold_time(g.size, e) for g in r) for r in self.rounds)

    def ideal(self) -> float:
        """Total fold work divided by the processes: the wall time of perfect use."""
        return len(self.groups) / self.processes

    def describe(self) -> str:
        """One line: each round's folds and their ranks."""
        rounds = []
        for r in self.rounds:
            rounds.append(", ".join(f"fold {g.fold} on {_ranks(g.ranks)}" for g in r))
        return " | ".join(rounds) or "nothing to train"

    def to_json(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "rounds": [[{"fold": g.fold, "ranks": list(g.ranks)} for g in r] for r in self.rounds],
            "predicted_wall_fold_times": round(self.wall(), 4),
            "ideal_fold_times": round(self.ideal(), 4),
            "assumed_efficiency_per_doubling": self.efficiency,
        }


def _ranks(ranks: tuple[int, ...]) -> str:
    if len(ranks) == 1:
        return f"process {ranks[0]}"
    return f"processes {ranks[0]}-{ranks[-1]}" if ranks == tuple(range(ranks[0], ranks[-1] + 1)) else str(ranks)


def fold_time(size: int, efficiency: float = DP_EFFICIENCY) -> float:
    """Predicted time of one fold on `size` processes, in one-process fold-times."""
    return 1.0 / (size * efficiency ** math.log2(size))


def group_sizes(processes: int, m: int) -> list[int]:
    """`processes` split into `m` groups whose sizes differ by at most one, larger first."""
    base, extra = divmod(processes, m)
    return [base + 1] * extra + [base] * (m - extra)


def make_plan(folds: list[int], processes: int, efficiency: float = DP_EFFICIENCY, grouped: bool = True) -> FoldPlan:
    """The plan for training `folds` (in order) on `processes` processes.

    `grouped=False` is the round-robin rule (fold i on process i mod N, no groups), kept for
    comparison and for users who want no data parallelism.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if not grouped:
        chunks = [folds[s : s + processes] for s in range(0, len(folds), processes)]
        return FoldPlan(processes, tuple(tuple(Group(k, (j,)) for j, k in enumerate(c)) for c in chunks), efficiency)

    @cache
    def best(remaining: int) -> tuple[float, int, tuple[int, ...]]:
        """(wall, processes in groups, folds per round) of the best plan for `remaining` folds."""
        if remaining == 0:
            return 0.0, 0, ()
        options = []
        for m in range(min(remaining, processes), 0, -1):
            sizes = group_sizes(processes, m)
            wall, grouped_procs, rounds = best(remaining - m)
            here = max(fold_time(s, efficiency) for s in sizes)
            options.append((round(here + wall, 9), grouped_procs + sum(s for s in sizes if s > 1), (m, *rounds)))
        return min(options)

    rounds, start = [], 0
    # Rounds of many folds first: whole rounds of one fold per process, then the grouped ones.
    for m in sorted(best(len(folds))[2], reverse=True):
        ranks, groups = 0, []
        for fold, size in zip(folds[start : start + m], group_sizes(processes, m)):
            groups.append(Group(fold, tuple(range(ranks, ranks + size))))
            ranks += size
        rounds.append(tuple(groups))
        start += m
    return FoldPlan(processes, tuple(rounds), efficiency)
