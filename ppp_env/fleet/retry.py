"""The order in which a worker takes its shard's tenants, and when a blocked one comes back.

A tenant that hit the lock timeout rolled back; it returns after a jittered exponential
backoff while the others go on (GitLab's ``with_lock_retries`` idea, per tenant), so one
blocked tenant never holds up its shard.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): doubling from 0.5 s, at most 15 s, with
    jitter so that retries of many tenants do not line up."""
    return float(min(15.0, 0.5 * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.5))


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
