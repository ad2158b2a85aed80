"""Pacing a shard's tenants by its streaming replicas' replay lag.

Before each tenant the worker asks :meth:`Pacer.wait`: while a replica of the shard is more
than ``PPP_MAX_REPLICA_LAG`` seconds behind, the shard's next tenant waits (the other shards
go on). What is measured (docs/fleet-migrations.md, "Pacing by replica lag", says why):

- a replica's lag is 0 once it has replayed everything the primary has flushed
  (``pg_current_wal_flush_lsn()``), so an idle or caught-up shard never waits;
- otherwise it is the time since the primary first had WAL the replica has not replayed:
  PPP samples the primary's flushed position at every check (``LagClock``) and, for
  discovered replicas, takes the larger of that and the primary's own ``replay_lag``.

Replicas are the shard's ``PPP_SHARD_<NAME>_REPLICA_URLS`` (read on each replica) or, when
unset, discovered from the primary's ``pg_stat_replication`` (physical walsenders only).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2

from ppp_env import db
from ppp_env.fleet.results import Pause
from ppp_env.settings import Instance, Settings, masked

Emit = Callable[[tuple[Any, ...]], None]

#: Seconds between two readings while a shard waits.
POLL = 0.5

_FLUSHED = "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint"

#: The primary's walsenders: ``pg_stat_replication`` without ``pg_stat_activity``, whose
#: snapshot of every backend costs ten times more; who each one is comes from :data:`_WHO`,
#: once per walsender.
_SENDERS = """
SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint, w.pid,
       pg_wal_lsn_diff(w.replay_lsn, '0/0')::bigint, extract(epoch FROM w.replay_lag)::float8
FROM (SELECT 1) AS one LEFT JOIN pg_stat_get_wal_senders() AS w ON true
"""

#: A walsender's name, and whether it serves a physical replica (a logical walsender, e.g. an
#: online move's subscription, is connected to a database).
_WHO = """
SELECT pid, coalesce(nullif(application_name, ''), 'walreceiver') || ' at '
         || coalesce(host(client_addr), 'local socket') || ' (pid ' || pid || ')',
       datname IS NULL
FROM pg_stat_activity WHERE pid = ANY(%s)
"""

_CAN_DISCOVER = "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')"

_REPLAYED = "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint"


class PacingError(Exception):
    """Pacing cannot go on for this shard: its rest is not run (the message says why)."""


@dataclass(frozen=True)
class Reading:
    """One replica at one check: its lag in seconds, or None with why it is unreachable."""

    replica: str
    lag: float | None
    #: The replica's replayed WAL position (bytes), when it was read.
    replayed: int | None = None
    error: str = ""


class LagClock:
    """When (by this process's clock) the primary's flushed WAL first passed each position
    seen at a check: a replica behind a position is behind by at least its age."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, flushed: int) -> None:
        if not self.samples or flushed > self.samples[-1][1]:
            self.samples.append((now, flushed))

    def lag(self, now: float, replayed: int) -> float:
        """Seconds since the first sample the replica has not replayed (0: none)."""
        for at, lsn in self.samples:
            if lsn > replayed:
                return now - at
        return 0.0

    def forget(self, replayed: int) -> None:
        """Drop the samples every replica has replayed (``replayed``: the slowest one's)."""
        while self.samples and self.samples[0][1] <= replayed:
            self.samples.popleft()


class NoPacing:
    """PPP_MAX_REPLICA_LAG unset or 0: nothing is queried, nothing waits."""

    #: The shard session the readings go through (the worker's, renewed with it).
    cur: Any = None

    def wait(self, emit: Emit, stop: Any) -> bool:
        return True

    def close(self) -> None:
        return None


class Pacer(NoPacing):
    """The lag readings of one shard's replicas and the wait before each of its tenants."""

    def __init__(
        self,
        shard: Instance,
        settings: Settings,
        cur: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shard, self.settings, self.cur, self.clock = shard, settings, cur, clock
        self.limit = settings.max_replica_lag
        self.lags = LagClock()
        #: Configured replicas still paced by (a given-up unreachable one is dropped).
        self.replicas: dict[str, Any] = {masked(u): u for u in shard.replicas}
        self.conns: dict[str, Any] = {}
        self.checked = bool(shard.replicas)
        #: Discovered walsenders by pid: their name, None for a logical one (not paced by).
        self.senders: dict[int, str | None] = {}

    # -- readings ------------------------------------------------------------------------------
    def read(self) -> list[Reading]:
        """Every replica's lag now; PacingError when the shard's replicas cannot be read."""
        try:
            if not self.checked:
                self.check_discovery()
            if self.shard.replicas:
                self.cur.execute(_FLUSHED)
                flushed, now = int(self.cur.fetchone()[0]), self.clock()
                self.lags.sample(now, flushed)
                readings = [self.read_replica(name, flushed, now) for name in self.replicas]
            else:
                flushed, readings = self.discover()
        except psycopg2.Error as exc:
            url = self.shard.masked_url("admin")
            raise PacingError(
                f"cannot read the WAL position at {url}: {db.first_line(exc)}"
            ) from None
        replayed = [r.replayed for r in readings if r.replayed is not None]
        self.lags.forget(min(replayed, default=flushed))
        return readings

    def discover(self) -> tuple[int, list[Reading]]:
        """The primary's flushed position and its physical replicas' lag, in one query."""
        self.cur.execute(_SENDERS)
        rows = self.cur.fetchall()
        flushed, now = int(rows[0][0]), self.clock()
        self.lags.sample(now, flushed)
        senders = [(pid, replayed, lag) for _, pid, replayed, lag in rows if pid is not None]
        unknown = [pid for pid, _, _ in senders if pid not in self.senders]
        if unknown:
            self.cur.execute(_WHO, (unknown,))
            for pid, name, physical in self.cur.fetchall():
                self.senders[pid] = name if physical else None
        return flushed, [
            Reading(name, self.lag(now, flushed, replayed, float(lag or 0)), replayed)
            for pid, replayed, lag in senders
            if replayed is not None and (name := self.senders.get(pid))
        ]

    def lag(self, now: float, flushed: int, replayed: int, reported: float = 0.0) -> float:
        if replayed >= flushed:
            return 0.0
        return max(self.lags.lag(now, replayed), reported)

    def check_discovery(self) -> None:
        self.cur.execute(_CAN_DISCOVER)
        if not self.cur.fetchone()[0]:
            raise PacingError(
                f"PPP_MAX_REPLICA_LAG is set but role {self.shard.admin_role} cannot read the "
                "replicas' lag in pg_stat_replication: GRANT pg_read_all_stats (or pg_monitor) "
                f"TO {self.shard.admin_role} as a superuser (`ppp init` does), or list the "
                f"replicas in {self.shard.env_prefix}REPLICA_URLS"
            )
        self.checked = True

    def read_replica(self, name: str, flushed: int, now: float) -> Reading:
        try:
            conn = self.conns.get(name) or self.connect(name)
            with conn.cursor() as cur:
                cur.execute(_REPLAYED)
                recovering, replayed = cur.fetchone()
        except psycopg2.Error as exc:
            self.drop(name)
            return Reading(name, None, error=db.first_line(exc))
        if not recovering:
            raise PacingError(
                f"{self.shard.env_prefix}REPLICA_URLS: {name} is not a replica "
                "(not in recovery): list the shard's streaming replicas there"
            )
        replayed = int(replayed or 0)
        return Reading(name, self.lag(now, flushed, replayed), replayed)

    def connect(self, name: str) -> Any:
        url = self.replicas[name]
        conn = psycopg2.connect(
            host=url.host,
            port=url.port,
            dbname=url.database,
            user=url.username,
            password=url.password,
            connect_timeout=self.settings.connect_timeout,
            application_name=f"{db.APPLICATION_NAME}-pacing",
            **dict(url.query),
        )
        conn.autocommit = True
        self.conns[name] = conn
        return conn

    def drop(self, name: str) -> None:
        conn = self.conns.pop(name, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for name in list(self.conns):
            self.drop(name)

    # -- the wait ------------------------------------------------------------------------------
    def wait(self, emit: Emit, stop: Any) -> bool:
        """Wait until every replica is within the limit; False when the shard must stop (the
        run's ``stop``, or pacing failed: a ``shard_error`` says why)."""
        started = self.clock()
        pause: Pause | None = None
        try:
            while not stop.is_set():
                waited = self.clock() - started
                holding = self.holding(self.read(), waited, emit)
                if not holding:
                    return True
                worst = max(holding, key=lambda r: float("inf") if r.lag is None else r.lag)
                pause = self.note(pause, worst, waited, emit)
                if waited >= self.settings.replica_wait_timeout:
                    raise PacingError(self.gave_up(worst, waited))
                stop.wait(POLL)
            return False
        except PacingError as exc:
            emit(("shard_error", self.shard.name, str(exc)))
            return False
        finally:
            if pause is not None:
                emit(("paused", self.shard.name, pause.ended(self.clock() - started)))

    def holding(self, readings: list[Reading], waited: float, emit: Emit) -> list[Reading]:
        """The readings that hold the shard back; an unreachable replica is given up (with a
        warning) after PPP_MAX_REPLICA_LAG seconds when PPP_REPLICA_UNREACHABLE=proceed."""
        holding = []
        for r in readings:
            if r.lag is not None:
                if r.lag > self.limit:
                    holding.append(r)
            elif self.settings.replica_unreachable == "proceed" and waited >= self.limit:
                del self.replicas[r.replica]
                emit(("warning", self.shard.name, give_up_line(self.shard.name, r, waited)))
            else:
                holding.append(r)
        return holding

    def note(self, pause: Pause | None, worst: Reading, waited: float, emit: Emit) -> Pause:
        """The pause so far: the first reading announces it; the largest lag is kept."""
        if pause is None:
            pause = Pause(self.shard.name, 0.0, worst.replica, worst.lag, self.limit, worst.error)
            emit(("pausing", self.shard.name, pause))
        elif worst.lag is not None and (pause.lag is None or worst.lag > pause.lag):
            pause = Pause(self.shard.name, waited, worst.replica, worst.lag, self.limit)
        return pause

    def gave_up(self, worst: Reading, waited: float) -> str:
        why = (
            f"still {worst.lag:.1f} s behind (> PPP_MAX_REPLICA_LAG={self.limit:g} s)"
            if worst.lag is not None
            else f"unreachable ({worst.error})"
        )
        return (
            f"replica {worst.replica} {why} after waiting {waited:.0f} s "
            f"(PPP_REPLICA_WAIT_TIMEOUT={self.settings.replica_wait_timeout:g} s): the shard's "
            "other tenants were not run; rerun to finish"
        )


def give_up_line(shard: str, reading: Reading, waited: float) -> str:
    return (
        f"shard {shard}: replica {reading.replica} unreachable for {waited:.1f} s "
        f"({reading.error}); going on without it (PPP_REPLICA_UNREACHABLE=proceed)"
    )


def pacer_for(settings: Settings, shard: str, cur: Any) -> NoPacing:
    """The shard's pacer: :class:`NoPacing` (no query at all) unless PPP_MAX_REPLICA_LAG > 0."""
    if settings.max_replica_lag <= 0:
        return NoPacing()
    return Pacer(settings.shard(shard), settings, cur)
