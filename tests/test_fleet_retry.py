"""The worker's retry scheduler on its own: order, backoff, stop, what is left; and the
escalating lock waits of a tenant's attempts (which settings and options give them)."""

from __future__ import annotations

import dataclasses
import random
import threading

import pytest

from ppp_env.errors import PPPError
from ppp_env.fleet.options import RunOptions
from ppp_env.fleet.retry import LockSteps, RetryQueue, backoff, seconds_text
from ppp_env.settings import Settings, load_settings


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
            assert base * 0.75 <= backoff(attempt) <= base * 1.25
        assert backoff(attempt, lambda lo, hi: lo) == base * 0.75
        assert backoff(attempt, lambda lo, hi: hi) == base * 1.25


# -- escalating lock waits ----------------------------------------------------------------------
def test_lock_waits_double_from_the_start_to_the_full_timeout() -> None:
    steps = LockSteps(start=0.02, ceiling=2.0, retries=5)
    assert [steps.step(a) for a in range(1, 10)] == [
        0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.0, 2.0
    ]  # fmt: skip
    assert steps.first_full == 8
    # 5 retries would stop at 0.64 s: the tenant gets the attempts up to the full timeout.
    assert steps.attempts == 8
    assert [steps.gives_up(a) for a in (1, 7, 8)] == [False, False, True]
    assert steps.describe(8) == "lock_timeout 0.02 s doubling to 2 s, 1 attempt(s) at 2 s"


def test_retries_beyond_the_escalation_are_more_attempts_at_the_full_timeout() -> None:
    steps = LockSteps(start=0.5, ceiling=2.0, retries=5)
    assert [steps.step(a) for a in range(1, 7)] == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert (steps.first_full, steps.attempts) == (3, 6)
    assert steps.describe(6) == "lock_timeout 0.5 s doubling to 2 s, 4 attempt(s) at 2 s"
    assert steps.describe(2) == "lock_timeout 0.5 s doubling to 1 s"


@pytest.mark.parametrize(
    ("start", "ceiling", "wait"),
    [(2.0, 2.0, 2.0), (5.0, 2.0, 2.0), (0.05, 0.0, 0.0)],
    ids=["start-equals-timeout", "start-above-timeout", "timeout-0-no-limit"],
)
def test_a_fixed_timeout_keeps_the_retries_as_they_were(start, ceiling, wait) -> None:
    steps = LockSteps(start=start, ceiling=ceiling, retries=2)
    assert [steps.step(a) for a in (1, 2, 3)] == [wait] * 3
    assert (steps.first_full, steps.attempts) == (1, 3)
    assert steps.describe(3) == f"lock_timeout {seconds_text(wait)}"


def test_seconds_text() -> None:
    assert [seconds_text(s) for s in (0.025, 0.2, 2.0, 0)] == [
        "0.025 s", "0.2 s", "2 s", "no limit"
    ]  # fmt: skip


def test_a_blocked_tenant_keeps_short_waits_for_seconds_and_the_others_go_on() -> None:
    """The schedule as the worker runs it (RetryQueue, real backoff, jitter drawn from a seeded
    generator): with the defaults, a tenant blocked for 6 s has waited at most 0.16 s per
    attempt meanwhile, and its step only reaches the full timeout after ~50 s."""
    steps = LockSteps(start=0.02, ceiling=2.0, retries=5)
    for seed in range(50):
        rng = random.Random(seed)
        clock = Clock()
        q = RetryQueue(
            ["blocked", "other"],
            threading.Event(),
            clock=clock,
            sleep=clock.sleep,
            delay=lambda attempt, rng=rng: backoff(attempt, rng.uniform),
        )
        started = clock.now
        waits: list[tuple[float, float]] = []  # (when the attempt started, its lock wait)
        while q:
            tenant = q.next()
            if tenant == "other":
                continue  # not blocked: done at once, without waiting for the blocked one
            attempt = q.attempts["blocked"]
            waits.append((clock.now - started, steps.step(attempt)))
            clock.now += steps.step(attempt)  # it waited its step and timed out
            if not steps.gives_up(attempt):
                q.later("blocked")
        assert len(waits) == steps.attempts == 8
        assert max(wait for when, wait in waits if when < 6.0) <= 0.16
        assert waits[-1][1] == 2.0 and waits[-1][0] > 30.0


# -- where the waits come from ------------------------------------------------------------------
@pytest.fixture
def defaults() -> Settings:
    env = {"PPP_SHARDS": "a", "PPP_PROJECT_DIR": "/nonexistent"}
    for prefix, port in (("PPP_VENEER_", "1"), ("PPP_SHARD_A_", "2")):
        env.update({f"{prefix}PORT": port, f"{prefix}ADMIN_PASSWORD": "x"})
        env[f"{prefix}APP_PASSWORD"] = "x"
    return load_settings(environ=env)


def test_the_settings_escalate_and_an_explicit_timeout_is_fixed(defaults: Settings) -> None:
    assert (defaults.migration_lock_timeout_start, defaults.migration_lock_timeout) == (0.02, 2)
    assert RunOptions().lock_steps(defaults) == LockSteps(0.02, 2.0, 5)
    # -x lock_timeout= / --lock-timeout alone: a fixed bound for every attempt, as before.
    assert RunOptions.from_x({"lock_timeout": "3"}).lock_steps(defaults) == LockSteps(3, 3, 5)
    # With a start too, it is the ceiling of the escalation; a start alone escalates to the
    # setting.
    both = RunOptions.from_x({"lock_timeout": "3", "lock_timeout_start": "0.1"})
    assert both.lock_steps(defaults) == LockSteps(0.1, 3.0, 5)
    alone = RunOptions.from_x({"lock_timeout_start": "0.1", "retries": "9"})
    assert alone.lock_steps(defaults) == LockSteps(0.1, 2.0, 9)
    changed = dataclasses.replace(
        defaults, migration_lock_timeout=5.0, migration_lock_timeout_start=0.5, lock_retries=1
    )
    assert RunOptions().lock_steps(changed) == LockSteps(0.5, 5.0, 1)


@pytest.mark.parametrize("value", ["0", "0.0005", "-1", "soon", "nan", "86401"])
def test_a_bad_start_option_is_a_clear_error(value: str) -> None:
    with pytest.raises(PPPError) as err:
        RunOptions.from_x({"lock_timeout_start": value})
    assert str(err.value) == (
        f"-x lock_timeout_start={value!r}: expected a number of seconds (0.001-86400)"
    )
