"""The order in which a worker takes its shard's tenants, when a blocked one comes back, and
how long each of its attempts may wait for a lock.

A tenant that hit the lock timeout rolled back; it returns after a jittered exponential
backoff while the others go on (GitLab's ``with_lock_retries`` idea, per tenant), so one
blocked tenant never holds up its shard. Its lock wait escalates with its attempts
(:class:`LockSteps`): an application query queued behind a waiting statement waits at most
the attempt's step, short while a blocker is young, the full timeout only once short waits
have failed for a while.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: Each retry of a tenant waits this many times longer for its locks than the attempt before.
GROWTH = 2.0


def seconds_text(seconds: float) -> str:
    """A lock wait for a message: ``0.02 s``, ``2 s``, ``no limit`` (0)."""
    return f"{seconds:g} s" if seconds > 0 else "no limit"


@dataclass(frozen=True)
class LockSteps:
    """How long a tenant's migration statements may wait for a lock, attempt by attempt.

    Attempt 1 waits at most ``start``; each retry twice as long, up to ``ceiling`` (the full
    timeout, PPP_MIGRATION_LOCK_TIMEOUT; 0 means no limit, for every attempt). A tenant is
    given up after :attr:`attempts` attempts: ``1 + retries``, but never before it has had
    one attempt at the full timeout. ``start >= ceiling`` is a fixed timeout.
    """

    start: float
    ceiling: float
    retries: int

    def step(self, attempt: int) -> float:
        """Seconds attempt ``attempt`` (1, 2, ...) may wait for each lock."""
        if self.ceiling <= 0:
            return 0.0
        if self.start <= 0:  # settings and options refuse it; never an endless escalation
            return self.ceiling
        return float(min(self.ceiling, self.start * GROWTH ** max(attempt - 1, 0)))

    @property
    def first_full(self) -> int:
        """The first attempt that waits the full timeout."""
        attempt = 1
        while self.step(attempt) < self.ceiling:
            attempt += 1
        return attempt

    @property
    def attempts(self) -> int:
        """How many attempts a blocked tenant gets before it is reported ``locked``."""
        return max(1 + self.retries, self.first_full)

    def gives_up(self, attempt: int) -> bool:
        """Whether a tenant whose attempt ``attempt`` hit the lock timeout is given up."""
        return attempt >= self.attempts

    def describe(self, attempts: int) -> str:
        """The lock waits of attempts 1 to ``attempts``, for a message."""
        first, last = self.step(1), self.step(attempts)
        if first == last:
            return f"lock_timeout {seconds_text(first)}"
        text = f"lock_timeout {seconds_text(first)} doubling to {seconds_text(last)}"
        if last == self.ceiling:
            text += f", {attempts - self.first_full + 1} attempt(s) at {seconds_text(last)}"
        return text


def backoff(attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): doubling from 0.5 s, at most 15 s, with
    jitter (±25 %) so that retries of many tenants do not line up.

    The lock waits double with the attempts too, so a blocked tenant's wait stays a
    twenty-fifth of the pause that follows it (0.02 s, then 0.5 s of pause, 0.04 s, 1 s, ...):
    its tables are blocked a few percent of the time, and the jitter is small enough that a
    blocker of a few seconds still only meets short waits.
    """
    return float(min(15.0, 0.5 * 2.0 ** (attempt - 1)) * uniform(0.75, 1.25))


class RetryQueue:
    """Tenants in order, then the ones sent back with :meth:`later` once their time came.

    ``stop`` (an Event) ends a wait for a retry at once; ``clock`` and ``sleep`` are the
    monotonic clock and the sleep (tests pass their own).
    """

    def __init__(
        self,
        tenants: Iterable[str],
        stop: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        delay: Callable[[int], float] = backoff,
    ) -> None:
        self._queue: deque[str] = deque(tenants)
        self._later: list[tuple[float, int, str]] = []  # (ready at, order, tenant)
        self._order = itertools.count()
        self._stop, self._clock, self._sleep, self._delay = stop, clock, sleep, delay
        #: How many times each tenant was handed out.
        self.attempts: Counter[str] = Counter()

    def __bool__(self) -> bool:
        return bool(self._queue or self._later)

    def next(self) -> str | None:
        """The next tenant to try, waiting for a retry's time when only retries are left;
        None when ``stop`` was set meanwhile (the tenant stays queued)."""
        if self._queue:
            tenant = self._queue.popleft()
        else:
            ready, _, tenant = heapq.heappop(self._later)
            while (wait := ready - self._clock()) > 0 and not self._stop.is_set():
                self._sleep(min(wait, 0.2))
            if self._stop.is_set():
                self._queue.appendleft(tenant)
                return None
        self.attempts[tenant] += 1
        return tenant

    def later(self, tenant: str) -> None:
        """Send ``tenant`` back: it comes again after the backoff of its last attempt."""
        ready = self._clock() + self._delay(self.attempts[tenant])
        heapq.heappush(self._later, (ready, next(self._order), tenant))

    def rest(self) -> list[str]:
        """Every tenant not handed out (or sent back and not handed out again)."""
        return [*self._queue, *(t for _, _, t in sorted(self._later))]
