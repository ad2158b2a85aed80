"""A real streaming replica of one of the session's local shards, for the pacing tests.

``LocalServers.replicate`` (``pg_basebackup -R``) copies the shard's running cluster into
its own folder, then the replica starts on a free port of 127.0.0.1 as the ``postgres`` OS
user, like the shards (``ppp_env.servers.local``). Only the local backend: the docker backend's
containers would need a container of their own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from ppp_env.servers.local import LocalServers, free_port
from ppp_env.settings import Instance


class ReplicaServers(LocalServers):
    """Local servers whose clusters are base backups of another server, not initdb's."""

    def basebackup(self, name: str, primary: Instance) -> None:
        self.replicate(name, primary)
        # The replica reports its replay position every second, not every 10 s: the primary's
        # pg_stat_replication (discovery) then sees a resumed replay at once.
        with open(self.data_dir(name) / "postgresql.auto.conf", "a") as f:
            f.write("wal_receiver_status_interval = 1\n")


@dataclass
class Replica:
    servers: ReplicaServers
    name: str
    port: int
    primary: Instance

    def connect(self) -> Any:
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.primary.superuser,
            password=self.primary.superuser_password,
            dbname=self.primary.dbname,
        )
        conn.autocommit = True
        return conn

    def sql(self, query: str) -> Any:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(query)
                return cur.fetchone()
        finally:
            conn.close()

    def url(self, password: str | None = None) -> str:
        """The replica as PPP_SHARD_<NAME>_REPLICA_URLS lists it (password: the shard's)."""
        auth = f"{self.primary.admin_role}:{password}@" if password else ""
        return f"postgresql://{auth}127.0.0.1:{self.port}/{self.primary.dbname}"

    def wait_caught_up(self, timeout: float = 30) -> None:
        """Until the replica has replayed everything the primary has written."""
        primary = psycopg2.connect(
            host=self.primary.host,
            port=self.primary.port,
            user=self.primary.superuser,
            password=self.primary.superuser_password,
            dbname="postgres",
        )
        primary.autocommit = True
        try:
            with primary.cursor() as cur:
                cur.execute("SELECT pg_current_wal_flush_lsn()::text")
                target = cur.fetchone()[0]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                done = self.sql(
                    f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, "
                    "pg_is_wal_replay_paused()"
                )
                if done[0]:
                    return
                time.sleep(0.1)
            raise AssertionError(f"the replica did not replay up to {target} in {timeout} s")
        finally:
            primary.close()

    def stop(self) -> None:
        self.servers.down(purge=True)


def start_replica(workdir: Path, primary: Instance) -> Replica:
    servers = ReplicaServers(workdir / f"replica-{primary.name}")
    name = f"{primary.name}_replica"
    try:
        servers.basebackup(name, primary)
        port = free_port()
        servers.start(name, port)
    except BaseException:
        servers.down(purge=True)
        raise
    replica = Replica(servers, name, port, primary)
    replica.wait_caught_up()
    return replica
