"""docker-compose.yml and the Docker backend of `ppp local`, without an engine.

The compose file is parsed and checked against what ppp expects (ppp_env.compose_settings),
and the CLI's failure paths run against a stand-in ``docker`` command that records how it was
called. tests/test_compose_engine.py runs the same paths against a real Docker engine.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from ppp_env import compose_settings as compose
from ppp_env import docker
from ppp_env.cli.main import _backend_for_up, cli
from ppp_env.settings import env_prefix, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_YML = ROOT / "docker-compose.yml"


def prefix(service: str) -> str:
    return env_prefix("veneer" if service == "veneer" else "shard", service)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_YML.read_text())
    assert isinstance(data, dict)
    return data


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (enough for our file)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = values.get(name, "")
        if op == ":-" and not value:
            return arg
        if op == ":?" and not value:
            raise AssertionError(f"compose would refuse: {name} unset ({arg})")
        return value

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}", one, text)


def test_services_are_the_veneer_and_the_example_shards(spec: dict[str, Any]) -> None:
    assert list(spec["services"]) == list(compose.SERVICES)
    values = compose.compose_values()
    assert values["PPP_SHARDS"].split(",") == [s for s in compose.SERVICES if s != "veneer"]


@pytest.mark.parametrize("service", compose.SERVICES)
def test_service_definition(spec: dict[str, Any], service: str) -> None:
    svc = spec["services"][service]
    p = prefix(service)
    image = svc["image"]
    assert image == "${" + f"{compose.IMAGE_VARIABLE}:-{compose.DEFAULT_IMAGE}" + "}"
    m = re.fullmatch(r"postgres:(\d+)(?:\.\d+)?(?:-[a-z0-9.]+)?", compose.DEFAULT_IMAGE)
    assert m and int(m.group(1)) >= 15, image
    assert "log_statement=all" in svc["command"]
    env = svc["environment"]
    assert env["POSTGRES_USER"] == compose.SUPERUSER
    assert "--auth-host=scram-sha-256" in env["POSTGRES_INITDB_ARGS"].split()
    # Development default: the one PPP uses when no .env exists and this stack runs.
    assert env["POSTGRES_PASSWORD"] == (
        "${" + p + "SUPERUSER_PASSWORD:-" + compose.DEVELOPMENT_PASSWORD + "}"
    )
    assert svc["ports"] == [
        f"127.0.0.1:${{{p}PORT:-{compose.default_port(service)}}}:{compose.CONTAINER_PORT}"
    ]
    test = " ".join(svc["healthcheck"]["test"])
    assert "pg_isready" in test and f"-p {compose.CONTAINER_PORT}" in test
    volume = svc["volumes"][0].split(":")[0]
    assert volume in spec["volumes"]


def test_compose_values_reach_the_stack(spec: dict[str, Any], tmp_path: Path) -> None:
    """Render the file with ppp's settings: ports, passwords and FDW addresses agree."""
    values = compose.compose_values()
    rendered = yaml.safe_load(interpolate(COMPOSE_YML.read_text(), values))
    settings = load_settings(environ={**values, "PPP_PROJECT_DIR": str(tmp_path)})
    assert [i.name for i in settings.instances] == list(compose.SERVICES)
    for inst in settings.instances:
        svc = rendered["services"][inst.name]
        host, port, container = svc["ports"][0].split(":")
        assert (host, int(port)) == (inst.host, inst.port) == ("127.0.0.1", inst.port)
        assert int(container) == compose.CONTAINER_PORT
        assert svc["environment"]["POSTGRES_PASSWORD"] == inst.superuser_password
        assert inst.superuser == svc["environment"]["POSTGRES_USER"]
        assert inst.superuser_dbname == svc["environment"]["POSTGRES_DB"]
        if inst.kind == "shard":
            # The veneer's container reaches the shard on the compose network.
            assert inst.fdw_host in rendered["services"]
            assert inst.fdw_host == inst.name
            assert inst.fdw_port == compose.CONTAINER_PORT
    assert [settings.instance(s).port for s in compose.SERVICES] == [15432, 15433, 15434, 15435]


def test_every_compose_variable_is_documented(spec: dict[str, Any]) -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_YML.read_text()))
    assert used
    example = (ROOT / ".env.example").read_text()
    for var in used:
        assert re.search(rf"^#? ?{var}=", example, re.M), var


def test_compose_values_keep_passwords_and_docker_ports() -> None:
    first = compose.compose_values()
    passwords = {k: v for k, v in first.items() if k.endswith("PASSWORD")}
    assert len(set(passwords.values())) == len(passwords) == 12
    again = compose.compose_values({**first, "PPP_VENEER_PORT": "25432", "PPP_BACKEND": "docker"})
    assert {k: again[k] for k in passwords} == passwords
    assert again["PPP_VENEER_PORT"] == "25432"
    # Ports chosen by the local backend are random free ports: back to the compose defaults.
    from_local = compose.compose_values({"PPP_VENEER_PORT": "41234", "PPP_BACKEND": "local"})
    assert from_local["PPP_VENEER_PORT"] == "15432"
    assert compose.compose_values()["PPP_VENEER_SUPERUSER_PASSWORD"] not in passwords.values()


# -- a stand-in docker command ------------------------------------------------------------------
FAKE_DOCKER = r"""#!/bin/sh
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1" in
  info)
    if [ "$FAKE_ENGINE" = up ]; then echo 27.3.1; exit 0; fi
    echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2
    exit 1 ;;
  ps)  # the project's containers by its name; none run from the folder with no .env
    case "$*" in *working_dir*) exit 0 ;; esac
    echo c1 c2 c3 c4; exit 0 ;;
  inspect)
    for s in veneer bluth_co cyberdyne initech; do echo "$s|/project-$s-1|running|healthy"; done
    exit 0 ;;
  image) exit 0 ;;
  volume) exit 0 ;;
  logs) exit 0 ;;
  compose)
    if [ "$2" = version ]; then echo "Docker Compose version v2.29.7"; exit 0; fi
    env | grep '^PPP_' | sort > "$FAKE_DOCKER_ENV"
    if [ -n "$FAKE_COMPOSE_FAIL" ]; then
      echo "Error response from daemon: password $PPP_VENEER_SUPERUSER_PASSWORD refused" >&2
      exit 1
    fi
    exit 0 ;;
esac
exit 2
"""


class FakeDocker:
    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        docker = self.bin / "docker"
        docker.write_text(FAKE_DOCKER)
        docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
        self.log = root / "docker.log"
        self.env_file = root / "docker.env"
        self.project = root / "project"
        self.project.mkdir()
        shutil.copy(COMPOSE_YML, self.project / "docker-compose.yml")

    def env(self, engine: str = "up", **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "FAKE_DOCKER_LOG": str(self.log),
            "FAKE_DOCKER_ENV": str(self.env_file),
            "FAKE_ENGINE": engine,
            "PPP_PROJECT_DIR": str(self.project),
            "PPP_LOCAL_DIR": str(self.project / "no-local-servers"),
            **extra,
        }

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def compose_calls(self) -> list[str]:
        return [c for c in self.calls() if c.startswith("compose ") and " version" not in c]

    def ppp(self, *args: str, **env: str) -> Result:
        return CliRunner().invoke(cli, list(args), env={**self.env(), **env})


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    for key in list(os.environ):
        if key.startswith("PPP_") or key.startswith("FAKE_"):
            monkeypatch.delenv(key)
    return FakeDocker(tmp_path)


def test_docker_available(fake: FakeDocker, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in fake.env(engine="down").items():
        monkeypatch.setenv(key, value)
    assert docker.docker_available() is False
    assert docker.docker_problem() == (
        "no Docker engine answers (`docker info`: Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock.)"
    )
    monkeypatch.setenv("FAKE_ENGINE", "up")
    assert docker.docker_available() is True
    found = docker.find_compose()
    assert found is not None and found.command == (str(fake.bin / "docker"), "compose")
    assert found.major == 2 and found.has_wait
    assert _backend_for_up("auto") == "docker"
    monkeypatch.setenv("PATH", str(fake.project))  # no docker at all
    assert docker.docker_available() is False
    assert docker.docker_problem() == "the docker command is not on PATH"
    assert _backend_for_up("auto") == "local"
    assert _backend_for_up("docker") == "docker"


def test_docker_backend_without_an_engine(fake: FakeDocker) -> None:
    result = fake.ppp("local", "up", "--backend", "docker", FAKE_ENGINE="down")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: Docker is not available: no Docker engine answers (`docker info`: Cannot "
        "connect to the Docker daemon at unix:///var/run/docker.sock.). Start Docker, or use "
        "the local servers: `ppp local up --backend local`"
    ]
    assert not (fake.project / ".env").exists()
    assert fake.compose_calls() == []
    result = fake.ppp("local", "status", "--backend", "docker", PATH=str(fake.project))
    assert result.stderr.splitlines() == [
        "Error: Docker is not available: the docker command is not on PATH. Start Docker, or "
        "use the local servers: `ppp local up --backend local`"
    ]


def test_auto_picks_docker_and_the_rest_follows(fake: FakeDocker) -> None:
    result = fake.ppp("local", "up")
    assert result.exit_code == 0, result.output
    name = compose.project_name(fake.project)
    assert result.stdout.splitlines() == [
        *(
            f"{s}: running in Docker on 127.0.0.1:{compose.default_port(s)}, running, healthy "
            f"(container project-{s}-1)"
            for s in compose.SERVICES
        ),
        f"settings written to {fake.project / '.env'}",
    ]
    base = (
        f"compose --project-directory {fake.project} -f {fake.project}/docker-compose.yml -p {name}"
    )
    assert fake.compose_calls() == [f"{base} up -d --wait"]
    settings = load_settings(environ={"PPP_PROJECT_DIR": str(fake.project)})
    assert settings.shard("cyberdyne").fdw_host == "cyberdyne"
    assert settings.shard("cyberdyne").fdw_port == 5432
    # compose got the very settings written to .env (passwords through the environment).
    passed = dict(line.split("=", 1) for line in fake.env_file.read_text().splitlines())
    assert passed["PPP_VENEER_SUPERUSER_PASSWORD"] == settings.veneer.superuser_password
    assert passed["PPP_SHARD_INITECH_PORT"] == "15435"
    dotenv = (fake.project / ".env").read_text()
    assert "PPP_BACKEND=docker" in dotenv
    for key, password in passed.items():
        if key.endswith("PASSWORD"):
            assert password not in result.output

    # up again keeps the passwords; status, logs and down use the recorded backend.
    assert fake.ppp("local", "up").exit_code == 0
    assert (fake.project / ".env").read_text() == dotenv
    for args, tail in (
        (["local", "status"], "ps --all"),
        (["logs", "bluth_co", "-n", "20"], "logs --no-color --no-log-prefix --tail 20 bluth_co"),
        (["local", "down"], "down"),
        (["local", "down", "--purge"], "down --volumes"),
    ):
        result = fake.ppp(*args)
        assert result.exit_code == 0, result.output
        assert fake.compose_calls()[-1] == f"{base} {tail}"
    result = fake.ppp("logs", "nope")
    assert result.stderr.splitlines() == [
        "Error: unknown instance 'nope': the compose stack has veneer, bluth_co, cyberdyne, initech"
    ]
    result = fake.ppp("local", "up", "--shards", "a,b")
    assert result.stderr.splitlines() == [
        "Error: --shards='a,b': the compose stack has the shards bluth_co,cyberdyne,initech; "
        "other shards need --backend local"
    ]


def test_compose_failure_is_one_line_without_passwords(fake: FakeDocker) -> None:
    result = fake.ppp("local", "up", "--backend", "docker", FAKE_COMPOSE_FAIL="1")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: `docker compose up` failed: Error response from daemon: password *** refused"
    ]
    secret = load_settings(environ={"PPP_PROJECT_DIR": str(fake.project)})
    assert secret.veneer.superuser_password
    assert secret.veneer.superuser_password not in result.output


def test_compose_file_missing(fake: FakeDocker) -> None:
    (fake.project / "docker-compose.yml").unlink()
    result = fake.ppp("local", "up", "--backend", "docker")
    assert result.stderr.splitlines() == [
        f"Error: no docker-compose.yml in {fake.project}: run ppp from the project folder or "
        "set PPP_PROJECT_DIR"
    ]
    assert not (fake.project / ".env").exists()
