"""Latency measurement shared by the serving tools and the serving benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


def time_calls(
    fns: dict[Key, Callable[[], object]], repeats: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> dict[Key, list[float]]:
    """Seconds per call of each function over ``repeats`` rounds after ``warmup`` untimed calls each; the functions
    take turns call by call, so a slow phase of a noisy machine hits them alike. ``clock``: wall time by default;
    ``time.thread_time`` counts only this thread's CPU time (single-threaded calls on a machine shared with other
    processes: the time they are preempted is left out)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[Key, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
