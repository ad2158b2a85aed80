"""Settings: every error is one ``Error: ...`` line naming the variable, exit code 1, no
traceback and no password; PPP_ENV selects .env.NAME; the environment wins over the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ppp_env.cli.main import cli
from ppp_env.errors import PPPError
from ppp_env.servers.local import write_dotenv
from ppp_env.settings import env_prefix, load_settings

INSTANCES = {"veneer": 15432, "bluth_co": 15433, "cyberdyne": 15434, "initech": 15435}


def base_values() -> dict[str, str]:
    """A valid topology; every password is unique and easy to search for in output."""
    values = {"PPP_SHARDS": "bluth_co,cyberdyne,initech"}
    for name, port in INSTANCES.items():
        p = env_prefix("veneer" if name == "veneer" else "shard", name)
        values.update(
            {
                f"{p}PORT": str(port),
                f"{p}ADMIN_PASSWORD": f"pw-{name}-admin-Zq7",
                f"{p}APP_PASSWORD": f"pw-{name}-app-Zq7",
                f"{p}SUPERUSER_PASSWORD": f"pw-{name}-super-Zq7",
            }
        )
    return values


PASSWORDS = [v for k, v in base_values().items() if k.endswith("PASSWORD")]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No PPP_* variable from the session leaks in; the project folder is empty."""
    for key in list(os.environ):
        if key.startswith("PPP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PPP_PROJECT_DIR", str(tmp_path))
    return tmp_path


def run(args: list[str], env: dict[str, str | None]) -> Result:
    return CliRunner().invoke(cli, args, env=env)


def assert_error(result: Result, line: str) -> None:
    """Exactly one line on stderr, nothing on stdout, exit code 1, no traceback or password."""
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for password in PASSWORDS:
        assert password not in result.output


def without(*names: str, **changes: str) -> dict[str, str | None]:
    env: dict[str, str | None] = dict(base_values())
    for name in names:
        env[name] = None
    env.update(changes)
    return env


def test_valid_settings_show_masked_urls(project: Path) -> None:
    result = run(["settings"], dict(base_values()))
    assert result.exit_code == 0, result.output
    assert "postgresql+psycopg2://bluth_co_app:***@127.0.0.1:15433/bluth_co" in result.stdout
    assert "postgresql+psycopg2://veneer_admin:***@127.0.0.1:15432/veneer" in result.stdout
    for password in PASSWORDS:
        assert password not in result.output


def test_instances_and_defaults(project: Path) -> None:
    s = load_settings(environ={**base_values(), "PPP_PROJECT_DIR": str(project)})
    assert [i.name for i in s.instances] == list(INSTANCES)
    shard = s.shard("cyberdyne")
    assert (shard.host, shard.port, shard.dbname) == ("127.0.0.1", 15434, "cyberdyne")
    assert (shard.admin_role, shard.app_role) == ("cyberdyne_admin", "cyberdyne_app")
    assert (shard.superuser, shard.superuser_dbname) == ("postgres", "postgres")
    assert (shard.fdw_host, shard.fdw_port) == ("127.0.0.1", 15434)
    assert (s.jobs, s.lock_timeout, s.connect_timeout) == (4, 10.0, 5)
    assert s.instance("veneer") is s.veneer
    assert "pw-" not in repr(s)
    assert (
        shard.masked_url("app")
        == "postgresql+psycopg2://cyberdyne_app:***@127.0.0.1:15434/cyberdyne"
    )


WHERE = "(looked in the process environment and {dir}/.env, which does not exist; see .env.example)"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        pytest.param(
            without("PPP_SHARDS"),
            "Error: PPP_SHARDS is not set: expected a comma-separated list of shard names, "
            "e.g. a,b,c " + WHERE,
            id="missing-shards",
        ),
        pytest.param(
            without(PPP_SHARDS=" "),
            "Error: PPP_SHARDS is not set: expected a comma-separated list of shard names, "
            "e.g. a,b,c " + WHERE,
            id="blank-shards",
        ),
        pytest.param(
            without("PPP_SHARD_CYBERDYNE_PORT"),
            "Error: PPP_SHARD_CYBERDYNE_PORT is not set: expected a TCP port number (1-65535) "
            + WHERE,
            id="missing-port",
        ),
        pytest.param(
            without("PPP_VENEER_APP_PASSWORD"),
            "Error: PPP_VENEER_APP_PASSWORD is not set: expected the password of role "
            "veneer_app " + WHERE,
            id="missing-app-password",
        ),
        pytest.param(
            without("PPP_SHARD_INITECH_ADMIN_PASSWORD"),
            "Error: PPP_SHARD_INITECH_ADMIN_PASSWORD is not set: expected the password of role "
            "initech_admin " + WHERE,
            id="missing-admin-password",
        ),
        pytest.param(
            without(PPP_VENEER_PORT="abc"),
            "Error: PPP_VENEER_PORT='abc' is not valid: expected a TCP port number (1-65535)",
            id="port-not-a-number",
        ),
        pytest.param(
            without(PPP_VENEER_PORT="0"),
            "Error: PPP_VENEER_PORT='0' is not valid: expected a TCP port number (1-65535)",
            id="port-zero",
        ),
        pytest.param(
            without(PPP_SHARD_BLUTH_CO_PORT="65536"),
            "Error: PPP_SHARD_BLUTH_CO_PORT='65536' is not valid: expected a TCP port number "
            "(1-65535)",
            id="port-too-big",
        ),
        pytest.param(
            without(PPP_SHARD_BLUTH_CO_FDW_PORT="-5"),
            "Error: PPP_SHARD_BLUTH_CO_FDW_PORT='-5' is not valid: expected a TCP port number "
            "(1-65535)",
            id="bad-fdw-port",
        ),
        pytest.param(
            without(PPP_SHARDS="bluth_co,Cyberdyne"),
            "Error: PPP_SHARDS='bluth_co,Cyberdyne': invalid shard name 'Cyberdyne': use "
            "lower-case letters, digits and underscores, starting with a letter or underscore",
            id="shard-upper-case",
        ),
        pytest.param(
            without(PPP_SHARDS="bluth_co;drop"),
            "Error: PPP_SHARDS='bluth_co;drop': invalid shard name 'bluth_co;drop': use "
            "lower-case letters, digits and underscores, starting with a letter or underscore",
            id="shard-semicolon",
        ),
        pytest.param(
            without(PPP_SHARDS='bluth_co,"x"'),
            "Error: PPP_SHARDS='bluth_co,\"x\"': invalid shard name '\"x\"': use "
            "lower-case letters, digits and underscores, starting with a letter or underscore",
            id="shard-quotes",
        ),
        pytest.param(
            without(PPP_SHARDS="bluth_co,,initech"),
            "Error: PPP_SHARDS='bluth_co,,initech': invalid shard name '': it must not be empty",
            id="shard-empty",
        ),
        pytest.param(
            without(PPP_SHARDS="pg_shard"),
            "Error: PPP_SHARDS='pg_shard': invalid shard name 'pg_shard': names starting with "
            "'pg_' are reserved",
            id="shard-pg-prefix",
        ),
        pytest.param(
            without(PPP_SHARDS="s" * 64),
            f"Error: PPP_SHARDS='{'s' * 64}': invalid shard name '{'s' * 64}': 64 bytes, "
            "at most 57 allowed",
            id="shard-64-bytes",
        ),
        pytest.param(
            without(PPP_SHARDS="bluth_co,cyberdyne,bluth_co"),
            "Error: PPP_SHARDS='bluth_co,cyberdyne,bluth_co': shard 'bluth_co' is listed twice",
            id="shard-duplicate",
        ),
        pytest.param(
            without(PPP_SHARDS="bluth_co,veneer"),
            "Error: PPP_SHARDS='bluth_co,veneer': 'veneer' is the veneer, not a shard",
            id="shard-named-veneer",
        ),
        pytest.param(
            without(PPP_SHARD_CYBERDYNE_DB="bluth_co", PPP_SHARD_CYBERDYNE_PORT="15433"),
            "Error: PPP_SHARD_CYBERDYNE_DB: shard 'cyberdyne' and shard 'bluth_co' are the same "
            "database 'bluth_co' on 127.0.0.1:15433; give each its own database",
            id="same-database-twice",
        ),
        pytest.param(
            without(PPP_SHARD_BLUTH_CO_DB="bluth'co"),
            'Error: PPP_SHARD_BLUTH_CO_DB: invalid database name "bluth\'co": use lower-case '
            "letters, digits and underscores, starting with a letter or underscore",
            id="db-quote",
        ),
        pytest.param(
            without(PPP_VENEER_DB="v" * 58),
            f"Error: PPP_VENEER_DB: invalid database name '{'v' * 58}': 58 bytes, at most 57 "
            "allowed",
            id="db-too-long-for-admin-role",
        ),
        pytest.param(
            without(PPP_VENEER_NAME="Front"),
            "Error: PPP_VENEER_NAME: invalid veneer name 'Front': use lower-case letters, "
            "digits and underscores, starting with a letter or underscore",
            id="bad-veneer-name",
        ),
        pytest.param(
            without(PPP_JOBS="0"),
            "Error: PPP_JOBS='0' is not valid: expected a number of parallel shard workers (1-64)",
            id="jobs",
        ),
        pytest.param(
            without(PPP_LOCK_TIMEOUT="soon"),
            "Error: PPP_LOCK_TIMEOUT='soon' is not valid: expected seconds to wait for a "
            "tenant's lock",
            id="lock-timeout",
        ),
        pytest.param(
            without(PPP_CONNECT_TIMEOUT="0"),
            "Error: PPP_CONNECT_TIMEOUT='0' is not valid: expected seconds (1-600)",
            id="connect-timeout",
        ),
        pytest.param(
            without(PPP_ENV="Staging;rm"),
            "Error: PPP_ENV='Staging;rm' is not valid: expected an environment name (lower-case "
            "letters, digits, '_' or '-'; it selects the file .env.NAME)",
            id="bad-env-name",
        ),
    ],
)
def test_settings_error(project: Path, env: dict[str, str | None], line: str) -> None:
    assert_error(run(["settings"], env), line.format(dir=project))


def test_every_command_reports_settings_errors_the_same_way(project: Path) -> None:
    line = (
        "Error: PPP_SHARD_CYBERDYNE_PORT is not set: expected a TCP port number (1-65535) "
        + WHERE.format(dir=project)
    )
    env = without("PPP_SHARD_CYBERDYNE_PORT")
    for args in (["init"], ["teardown", "--yes"], ["psql", "veneer"], ["settings"]):
        assert_error(run(args, env), line)


def test_traceback_on_request(project: Path) -> None:
    env = without("PPP_SHARDS")
    for args, extra in ((["--traceback", "settings"], {}), (["settings"], {"PPP_TRACEBACK": "1"})):
        result = run(args, {**env, **extra})
        assert result.exit_code == 1
        assert isinstance(result.exception, PPPError)
        assert "PPP_SHARDS is not set" in str(result.exception)


def test_dotenv_file_is_read(project: Path) -> None:
    write_dotenv(project / ".env", base_values())
    s = load_settings(environ={"PPP_PROJECT_DIR": str(project)})
    assert s.source == str(project / ".env")
    assert s.veneer.app_password == "pw-veneer-app-Zq7"


def test_environment_wins_over_dotenv(project: Path) -> None:
    write_dotenv(project / ".env", base_values())
    env = {"PPP_PROJECT_DIR": str(project), "PPP_VENEER_PORT": "25432", "PPP_SHARDS": "initech"}
    s = load_settings(environ=env)
    assert s.veneer.port == 25432
    assert list(s.shards) == ["initech"]
    assert s.shard("initech").port == 15435  # the rest still from the file


def test_ppp_env_selects_its_file(project: Path) -> None:
    write_dotenv(project / ".env", {"PPP_SHARDS": "only_in_default"})
    staging = base_values()
    staging["PPP_VENEER_PORT"] = "35432"
    write_dotenv(project / ".env.staging", staging)
    s = load_settings(environ={"PPP_PROJECT_DIR": str(project), "PPP_ENV": "staging"})
    assert (s.env_name, s.veneer.port, s.source) == (
        "staging",
        35432,
        str(project / ".env.staging"),
    )
    assert load_settings("staging", {"PPP_PROJECT_DIR": str(project)}).veneer.port == 35432
    # Through the CLI: the variable and the --env option.
    for args, env in (
        (["settings"], {"PPP_ENV": "staging"}),
        (["--env", "staging", "settings"], {}),
    ):
        result = run(args, env)
        assert result.exit_code == 0, result.output
        assert "127.0.0.1:35432/veneer" in result.stdout
        assert str(project / ".env.staging") in result.stdout


def test_ppp_env_without_its_file(project: Path) -> None:
    write_dotenv(project / ".env", base_values())
    result = run(["--env", "prod", "settings"], {})
    assert_error(
        result,
        "Error: PPP_SHARDS is not set: expected a comma-separated list of shard names, e.g. "
        f"a,b,c (looked in the process environment and {project}/.env.prod, which does not "
        "exist; see .env.example)",
    )


@pytest.mark.parametrize(
    "password",
    ["plain", "with space", "quote'and\"double", "dollar$HOME${USER}", "hash # not a comment",
     "back\\slash\\", "ünï €"],
)  # fmt: skip
def test_dotenv_round_trip_keeps_passwords_literally(project: Path, password: str) -> None:
    values = base_values()
    values["PPP_VENEER_APP_PASSWORD"] = password
    path = project / ".env"
    path.write_text("# my comment\nOTHER=kept\n")
    write_dotenv(path, values)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert text.startswith("# my comment\nOTHER=kept\n")
    s = load_settings(environ={"PPP_PROJECT_DIR": str(project)})
    assert s.veneer.app_password == password
    # Rewriting updates in place, and `remove` drops lines.
    write_dotenv(path, {"PPP_VENEER_PORT": "1234"}, remove={"OTHER"})
    text2 = path.read_text()
    assert "OTHER=" not in text2 and text2.count("PPP_VENEER_PORT=") == 1
    assert load_settings(environ={"PPP_PROJECT_DIR": str(project)}).veneer.port == 1234


def test_dotenv_rewrite_keeps_lines_order_and_mode_and_leaves_no_temporary_file(
    project: Path,
) -> None:
    path = project / ".env"
    path.write_text("# top\nexport PPP_JOBS=3\nOTHER=kept")  # no final newline
    path.chmod(0o644)
    write_dotenv(path, {"PPP_JOBS": "4", "PPP_SHARDS": "a,b"}, remove={"OTHER", "ABSENT"})
    assert path.read_text() == (
        "# top\nPPP_JOBS=4\n\n# Written by `ppp local up`\nPPP_SHARDS='a,b'\n"
    )
    assert path.stat().st_mode & 0o777 == 0o600  # it holds passwords
    write_dotenv(path, {"PPP_SHARDS": "c"})  # in place: no second comment, nothing added
    assert path.read_text().count("PPP_SHARDS") == 1 and path.read_text().count("# Written") == 1
    assert sorted(p.name for p in project.iterdir()) == [".env"]


def test_instance_lookup(project: Path) -> None:
    s = load_settings(environ={**base_values(), "PPP_PROJECT_DIR": str(project)})
    with pytest.raises(PPPError, match=r"^unknown instance 'nope': expected one of veneer, "):
        s.instance("nope")
    with pytest.raises(PPPError, match=r"^unknown shard 'veneer'; PPP_SHARDS lists: bluth_co"):
        s.shard("veneer")


@pytest.mark.parametrize(
    ("body", "line", "why"),
    [
        ("this is junk\n", 2, "expected NAME=value"),
        (
            "PPP_VENEER_APP_PASSWORD='pw-open-Zq7\n",
            2,
            "expected NAME=value (an unterminated quote?)",
        ),
        ("\n\n# a comment\nPPP_SHARD_LONELY\n", 5, "expected NAME=value"),
    ],
)
def test_malformed_dotenv_line_is_an_error_naming_file_and_line(
    project: Path, body: str, line: int, why: str
) -> None:
    good = "".join(f"{k}={v}\n" for k, v in base_values().items())
    path = project / ".env"
    path.write_text("PPP_JOBS=2\n" + body + good)
    before = path.read_text()
    message = f"Error: {path}, line {line}: cannot parse this line: {why}"
    for args in (["settings"], ["init"], ["local", "up", "--backend", "local"], ["local", "down"]):
        result = run(args, {})
        assert_error(result, message)
        assert "pw-open-Zq7" not in result.output
    assert path.read_text() == before  # nothing done
    assert sorted(p.name for p in project.iterdir()) == [".env"]
    with pytest.raises(PPPError, match=f"line {line}: cannot parse this line"):
        load_settings(environ={"PPP_PROJECT_DIR": str(project)})


@pytest.mark.parametrize("name", ["acme\n", "acme\r", "\nacme", "ac me", "acme\x00"])
def test_identifiers_must_match_in_full(name: str) -> None:
    from ppp_env.identifiers import validate_identifier, validate_tenant

    with pytest.raises(PPPError, match="invalid"):
        validate_identifier(name)
    with pytest.raises(PPPError, match="invalid tenant schema name"):
        validate_tenant(name)
