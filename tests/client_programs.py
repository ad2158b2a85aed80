"""Helpers for the tests of how PPP runs pg_dump, psql and pg_restore (ppp_env.servers.clients):
folders of client programs that only answer ``--version``, settings that run the programs
locally, and the check that an error is one clear sentence without a password."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ppp_env.servers.clients import PROGRAMS
from ppp_env.settings import Settings


def fake_client_programs(folder: Path, version: str = "9.6.0") -> Path:
    """A folder whose pg_dump, psql and pg_restore only print ``<name> (PostgreSQL) <version>``
    (what PPP reads of them before it runs anything)."""
    folder.mkdir(parents=True, exist_ok=True)
    for program in PROGRAMS:
        script = folder / program
        script.write_text(f"#!/bin/sh\necho '{program} (PostgreSQL) {version}'\n")
        script.chmod(0o755)
    return folder


def without_containers(topology: Any) -> Settings:
    """The session's settings with no PPP_*_CONTAINER: client programs run on this machine."""
    blank = {f"{inst.env_prefix}CONTAINER": "" for inst in topology.settings.instances}
    return topology.settings_for(topology.variant(**blank))


def secrets_of(settings: Settings) -> list[str]:
    """Every password of the settings."""
    out: list[str] = []
    for inst in settings.instances:
        out += [inst.admin_password, inst.app_password, inst.superuser_password or ""]
    return [p for p in out if p]


def assert_one_sentence(message: str, secrets: Iterable[str] = ()) -> None:
    """One sentence, on one line, starting lower case (the CLI prefixes ``Error: ``), with no
    full stop inside and no password."""
    assert "\n" not in message, message
    assert message[:1].islower(), message
    assert not re.search(r"[.!?]\s+[A-Z]", message), message
    assert not message.rstrip().endswith("."), message
    for secret in secrets:
        assert secret not in message, "a password is in the message"


def server_log(topology: Any, name: str) -> str | None:
    """An instance's server log (every statement): the local backend's file, or the
    container's output; None when neither is at hand."""
    if topology.servers is not None:
        return str(topology.servers.log_file(name).read_text(errors="replace"))
    container = topology.settings.instance(name).container
    if not container:
        return None
    done = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    return done.stdout + done.stderr
