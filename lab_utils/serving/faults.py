"""Fault injection for the model server, off unless asked for: a seeded random sequence decides,
per predict request, whether to answer 503 and whether to sleep first, so a given seed injects
the same faults into the same sequence of requests; and the counters ``/stats`` reports."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from lab_utils.errors import LabError


class FaultSettingsError(LabError, ValueError):
    """A fault setting out of its range (a rate outside 0-1, a negative delay)."""


@dataclass(frozen=True)
class Faults:
    """Faults injected into predict requests; all zero (the default) injects nothing.

    Parameters
    ----------
    fail_rate : float
        Fraction of predict requests answered ``503 Service Unavailable`` (at once).
    delay : float
        Seconds a delayed request waits before it is processed.
    delay_rate : float
        Fraction of the other predict requests delayed by ``delay``.
    seed : int
        Seed of the decision sequence: the same seed gives the same faults to the same sequence
        of requests.
    """

    fail_rate: float = 0.0
    delay: float = 0.0
    delay_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("fail_rate", "delay_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FaultSettingsError(f"{name}={value} must be between 0 and 1: the "
                                         "fraction of predict requests it applies to "
                                         "(0.25 is one in four; 0 turns it off)")
        if self.delay < 0:
            raise FaultSettingsError(f"delay={self.delay} must be >= 0 seconds: how long a "
                                     "delayed request waits (0 turns delays off)")

    @property
    def enabled(self) -> bool:
        return self.fail_rate > 0 or (self.delay > 0 and self.delay_rate > 0)


class FaultInjector:
    """Draws (fail, delay) for each predict request from one seeded sequence."""

    def __init__(self, faults: Faults):
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()

    def draw(self) -> tuple[bool, float]:
        if not self.faults.enabled:
            return False, 0.0
        with self._lock:
            # Always two draws per request, so one decision never shifts the other's sequence.
            fail, slow = self._rng.random(), self._rng.random()
        delay = self.faults.delay if slow < self.faults.delay_rate else 0.0
        return fail < self.faults.fail_rate, delay


@dataclass
class Stats:
    """Counters served at ``/stats``."""

    predict_requests: int = 0
    rows_received: int = 0
    rows_answered: int = 0
    bad_requests: int = 0
    injected_errors: int = 0
    injected_error_rows: int = 0
    delayed: int = 0
    delayed_rows: int = 0
    busy_refusals: int = 0  # predicts answered 429: more than the admission takes at once
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}
