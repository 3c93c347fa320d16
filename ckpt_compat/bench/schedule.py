"""The order rounds are taken in: interleaved passes."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Key = TypeVar("Key")
Round = TypeVar("Round")


@dataclass
class Schedule(Generic[Key, Round]):
    """Rounds by trial, in the order they were taken."""

    rounds: dict[Key, list[Round]] = field(default_factory=dict)


def interleaved(
    trials: Mapping[Key, Callable[[], Round]],
    rounds: Callable[[Key, list[Round]], int],
    *,
    seed: int = 0,
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
    """
    order = random.Random(seed)
    done: Schedule[Key, Round] = Schedule({key: [] for key in trials})
    while True:
        due = [key for key in trials if len(done.rounds[key]) < rounds(key, done.rounds[key])]
        if not due:
            return done
        order.shuffle(due)
        for key in due:
            done.rounds[key].append(trials[key]())
