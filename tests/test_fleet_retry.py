"""The worker's retry scheduler on its own: order, backoff, stop, what is left."""

from __future__ import annotations

import threading

from ppp_env.fleet.retry import RetryQueue, backoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def queue(tenants: list[str], clock: Clock, stop: threading.Event | None = None) -> RetryQueue:
    return RetryQueue(
        tenants,
        stop or threading.Event(),
        clock=clock,
        sleep=clock.sleep,
        delay=lambda attempt: 1.0 * attempt,
    )


def test_tenants_in_order_and_a_blocked_one_comes_back_after_the_others() -> None:
    clock = Clock()
    q = queue(["a", "b", "c"], clock)
    assert q.next() == "a"
    q.later("a")  # blocked: back in 1 s
    assert [q.next(), q.next()] == ["b", "c"]
    assert clock.slept == []  # the others went on without waiting
    assert q.next() == "a" and q.attempts["a"] == 2
    assert abs(sum(clock.slept) - 1.0) < 1e-9
    q.later("a")  # blocked again: back in 2 s
    assert q.rest() == ["a"]
    assert q.next() == "a" and q.attempts["a"] == 3 and not q


def test_retries_come_back_in_order_of_readiness() -> None:
    clock = Clock()
    q = queue(["a", "b"], clock)
    q.next()
    q.next()
    q.attempts["a"] += 2  # a's next wait is longer than b's
    q.later("a")
    q.later("b")
    assert q.rest() == ["b", "a"]
    assert [q.next(), q.next()] == ["b", "a"]


def test_stop_ends_a_wait_and_keeps_the_tenant_queued() -> None:
    clock = Clock()
    stop = threading.Event()
    q = queue(["a", "b"], clock, stop)
    q.next()
    q.later("a")
    stop.set()
    assert q.next() == "b"  # queued tenants are still handed out; the caller checks stop
    assert q.next() is None and q.rest() == ["a"] and q.attempts["a"] == 1


def test_backoff_doubles_to_fifteen_seconds_with_jitter() -> None:
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 15.0), (10, 15.0)]:
        for _ in range(20):
            assert base * 0.5 <= backoff(attempt) <= base * 1.5
