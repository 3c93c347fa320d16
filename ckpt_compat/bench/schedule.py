"""The order rounds are taken in: interleaved passes, with the limits taken in every pass."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Key = TypeVar("Key")
Round = TypeVar("Round")


@dataclass
class Schedule(Generic[Key, Round]):
    """Rounds by trial, each with the pass it was taken in."""

    rounds: dict[Key, list[Round]] = field(default_factory=dict)
    passes: dict[Key, list[int]] = field(default_factory=dict)

    def same_pass(self, key: Key, limit: Key) -> list[tuple[Round, Round]]:
        """Each round of ``key`` with the round of ``limit`` taken in the same pass."""
        by_pass = dict(zip(self.passes.get(limit, []), self.rounds.get(limit, []), strict=True))
        return [
            (r, by_pass[p])
            for p, r in zip(self.passes.get(key, []), self.rounds.get(key, []), strict=True)
            if p in by_pass
        ]


def interleaved(
    trials: Mapping[Key, Callable[[], Round]],
    rounds: Callable[[Key, list[Round]], int],
    *,
    seed: int = 0,
    every_pass: Mapping[Key, Callable[[], Round]] | None = None,
) -> Schedule[Key, Round]:
    """Run every trial its number of rounds, **interleaved**: pass after pass, each pass one round
    of every trial that still wants one, in a new random order (seeded) each pass.

    Rounds of one result taken back to back share whatever the machine was doing in those seconds
    (a noisy neighbour, a host reclaiming memory) and the whole result shifts; spread over the
    session, such a burst costs each result a round or two, which its median drops. This is the
    randomized multiple interleaved trials method of Abedi and Brecht, "Conducting Repeatable
    Experiments in Highly Variable Cloud Computing Environments" (ICPE 2017).

    ``rounds(key, done)`` says how many rounds ``key`` wants, knowing its rounds so far (so a
    result can ask for more once it proves to be fast and jittery); it is asked again every pass.
    ``every_pass``: trials taken once in every pass, shuffled in with the others (the limits the
    pass's results are judged against, minutes from them rather than a session away).
    """
    order = random.Random(seed)
    limits = dict(every_pass or {})
    done: Schedule[Key, Round] = Schedule(
        {key: [] for key in [*trials, *limits]}, {key: [] for key in [*trials, *limits]}
    )
    number = 0
    while True:
        due = [key for key in trials if len(done.rounds[key]) < rounds(key, done.rounds[key])]
        if not due:
            return done
        due += list(limits)
        order.shuffle(due)
        for key in due:
            done.rounds[key].append((trials[key] if key in trials else limits[key])())
            done.passes[key].append(number)
        number += 1
