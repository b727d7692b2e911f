"""Overhead measured call by call, for machines whose speed drifts.

The machines these benchmarks run on change speed by 20% or more within a fraction
of a second, so modes are not timed in batches: each round runs one call of each
mode, in a random order (a fixed or rotating order would give each mode the same
predecessor, whose leftovers in the CPU's caches it would pay for), and each call
is compared with the baseline's call of the same round.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable


def interleaved(
    modes: dict[str, Callable[[], object]], rounds: int, seed: int = 2026
) -> dict[str, list[float]]:
    """Per-call times by mode, in seconds: one call of each mode per round."""
    names = list(modes)
    times: dict[str, list[float]] = {name: [] for name in names}
    shuffle = random.Random(seed).shuffle
    clock = time.perf_counter
    for _ in range(rounds):
        shuffle(names)
        for name in names:
            call = modes[name]
            start = clock()
            call()
            times[name].append(clock() - start)
    return times


def paired_added(values: list[float], baseline: list[float]) -> float:
    """Median difference to the baseline's call of the same round: robust to the
    machine's drift, and to the rare call that a background thread's burst hits."""
    return statistics.median(v - b for v, b in zip(values, baseline, strict=True))
