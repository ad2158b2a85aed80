"""The command reference (docs/cli.md), generated from the command line itself.

``python -m ppp_env.cli.reference > docs/cli.md`` (``make docs``) writes it; the test suite
regenerates it and compares, so the reference cannot drift from the commands: every command,
its options and help as ``--help`` prints them, and the exit codes.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from ppp_env.cli.main import cli

#: Width the help text is wrapped to (independent of the terminal that generates it).
WIDTH = 100

#: What each exit code means (tests/test_cli.py runs the real console scripts against it).
EXIT_CODES = (
    ("0", "done", "done"),
    (
        "1",
        "`Error: ...` on stderr: a setting, a refused input, a failed tenant or shard, a "
        "report (`--report`, `--html`) that cannot be written",
        "a Python traceback: a fault to report (e.g. env.py cannot be imported)",
    ),
    (
        "2",
        "usage error (`Usage: ...`: unknown command or option, missing argument)",
        "usage error (`usage: alembic ...`)",
    ),
    (
        "255",
        "-",
        "`FAILED: ...`: the command failed (a setting, a failed tenant or shard, an unknown "
        "revision, a report (`-x report=`) that cannot be written)",
    ),
)


def _walk(
    command: click.Command, path: list[str], parent: click.Context | None
) -> Iterator[tuple[list[str], click.Context]]:
    ctx = command.make_context(
        path[-1],
        [],
        parent=parent,
        resilient_parsing=True,  # no argument is required just to print help
        terminal_width=WIDTH,
        max_content_width=WIDTH,
    )
    yield path, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, [*path, name], ctx)


def render_reference() -> str:
    """docs/cli.md: a section per command (its ``--help``), then the exit codes."""
    lines = [
        "# Command reference",
        "",
        "Generated from the command line by `make docs` (`python -m ppp_env.cli.reference`);",
        "the test suite regenerates it and fails when it differs. Do not edit by hand.",
        "",
    ]
    commands = list(_walk(cli, ["ppp"], None))
    lines += [f"- [`{' '.join(p)}`](#{'-'.join(p)})" for p, _ctx in commands]
    for path, ctx in commands:
        lines += ["", f'<a id="{"-".join(path)}"></a>', f"## {' '.join(path)}", ""]
        lines += ["```text", ctx.get_help().rstrip(), "```"]
    lines += [
        "",
        "## Exit codes",
        "",
        "The same for every command:",
        "",
        "| code | `ppp ...` | `alembic ...` (`-n veneer`, `-n shared` or the tenants) |",
        "|---|---|---|",
    ]
    lines += [f"| {code} | {ppp} | {alembic} |" for code, ppp, alembic in EXIT_CODES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    click.echo(render_reference(), nl=False)
