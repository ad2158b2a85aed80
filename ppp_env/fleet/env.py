"""What ``migrations/env.py`` runs: Alembic commands over every tenant of the fleet.

The command Alembic is running decides the shape:

- ``upgrade``, ``downgrade``, ``stamp``: the fleet runner (``pool``: a worker per shard),
  every tenant on every shard, then a veneer refresh of the tenants whose revision changed;
- ``current``: one line per tenant: shard, tenant, revision;
- ``--sql`` (offline): the SQL for every shard and tenant, with a header per tenant, on
  stdout or one file per shard (``-x sql_dir=DIR``); for PPP's own calls
  (``ppp_env.fleet.commands.render_path``), the rendered revisions as data instead;
- anything else (``revision --autogenerate``, ``check``, ``history -i``): one template
  tenant schema (``-x template=NAME``, else the first tenant whose schema exists).

``-x shard=a,b`` and ``-x tenant=x,y`` narrow every command; see RunOptions for the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from alembic.runtime.environment import EnvironmentContext
from sqlalchemy.pool import NullPool

from ppp_env import db
from ppp_env.alembic_adapter import (
    Planner,
    as_tuple,
    destination_argument,
    step_function,
    template_dir,
)
from ppp_env.alembic_env import PPPEnvironment
from ppp_env.errors import PPPError
from ppp_env.fleet.commands import RENDER_KEY, RenderRequest
from ppp_env.fleet.hooks import AlembicHooks, Rendered
from ppp_env.fleet.options import CATALOG_KEY, OPTIONS_KEY, RENDERABLE, RESULT_KEY, RunOptions
from ppp_env.fleet.pool import run_fleet
from ppp_env.fleet.progress import make_display
from ppp_env.fleet.rendering import (
    OnlineRunner,
    RenderMemo,
    Setup,
    render_steps,
    run_steps_online,
    step_label,
)
from ppp_env.fleet.results import refresh_veneer
from ppp_env.fleet.status import shard_states
from ppp_env.fleet.verdicts import VerdictCache
from ppp_env.identifiers import quote_ident
from ppp_env.report import check_target, write_run_report
from ppp_env.tenant_state import TenantState, group_by_shard
from ppp_env.veneer.catalog import Tenant, in_service, list_tenants


class FleetEnvironment(PPPEnvironment):
    """The tenant environment: every command over the tenants of the catalog."""

    def __init__(self, env: EnvironmentContext, configure_kw: dict[str, Any]) -> None:
        super().__init__(env, configure_kw)
        self.options = RunOptions.from_x(self.x, self.config.attributes.get(OPTIONS_KEY))
        kw = dict(configure_kw)
        self.setup = Setup(kw.pop("target_metadata", None), kw)
        #: What rendering learned (inherited by the workers): no revision's code runs twice
        #: for rendering; verdicts kept across runs beside env.py (fleet.verdicts).
        self.memo = RenderMemo(VerdictCache.of(template_dir(self.env.script)))
        self._rendered: dict[tuple[tuple[str, ...], tuple[str, ...]], Rendered] = {}

    @property
    def env_name(self) -> str | None:
        return self.options.env

    def tenants(self) -> list[Tenant]:
        """The tenants a command covers: the catalog's, narrowed by -x shard/tenant, without
        those ``ppp tenant remove`` retired."""
        given = self.config.attributes.get(CATALOG_KEY)
        if given is not None:  # read by the caller (``ppp migrate``), narrowed the same way
            return list(given)
        opts = self.options
        return in_service(
            list_tenants(self.settings, shards=opts.shards, tenants=opts.tenants, timestamps=False)
        )

    # -- upgrade / downgrade / stamp ------------------------------------------------------------
    def move(self) -> None:
        fn = step_function(self.env)
        if fn is None:
            self.other()
            return
        if self.options.report:
            check_target(self.options.report)  # before anything runs
        tenants = self.tenants()
        self.env.script.get_heads()  # load every revision once, before the workers fork
        hooks = AlembicHooks(
            self.command,
            Planner(self.env, fn),
            self.render,
            self.run_online,
            step_label,
            OnlineRunner(self.env, self.setup),
        )
        states = self.plan_before_fork(tenants, hooks)
        display = make_display(self.options.output, self.options.verbose)
        result = run_fleet(
            self.settings, group_by_shard(tenants), self.options, hooks, display, states
        )
        result.revision = self.target()
        if self.options.refresh and result.changed:
            refresh_veneer(self.settings, result, result.changed)
        display.summary(result)
        self.config.attributes[RESULT_KEY] = result
        problems = [] if result.ok else [result.failure_message()]
        if self.options.report:
            try:
                write_run_report(self.options.report, result.to_json())
            except PPPError as exc:
                problems.append(str(exc))
        if problems:
            raise PPPError("\n".join(problems))

    def target(self) -> str:
        """The revision the command goes to: as given, with what it resolved to."""
        given = destination_argument(self.env)
        try:
            resolved = self.env.get_revision_argument()
        except Exception:  # a relative revision (-1): as given
            return str(given)
        shown = " ".join(resolved) if isinstance(resolved, tuple) else str(resolved or "base")
        return shown if str(given) in (shown, "None") else f"{given} ({shown})"

    def plan_before_fork(
        self, tenants: list[Tenant], hooks: AlembicHooks
    ) -> dict[str, TenantState]:
        """Read every tenant's state here, once (one query per shard, the shards at once), and
        render the path from every starting point they are at, so that the workers it forks
        inherit both: they read no state again and run no revision's code to render (each
        revision runs here at most once). The tenants already where the command goes are
        settled without a worker. A shard that does not answer is left to its worker, which
        reports it."""
        states, _errors = shard_states(self.settings, tenants)
        if self.options.render and self.command in RENDERABLE:
            for start in sorted({st.heads for st in states.values()}):
                steps = hooks.steps(start)
                if steps:
                    self.render(steps, start)
        return states

    def render(self, steps: Sequence[Any], heads: tuple[str, ...]) -> Rendered:
        key = (heads, tuple(step_label(s) for s in steps))
        if key not in self._rendered:
            self._rendered[key] = render_steps(self.env, steps, heads, self.setup, None, self.memo)
        return self._rendered[key]

    def run_online(self, conn: Any, tenant: str, steps: Sequence[Any], own: bool = False) -> None:
        run_steps_online(self.env, conn, tenant, steps, self.setup, own)

    # -- current --------------------------------------------------------------------------------
    def current(self) -> None:
        tenants = self.tenants()
        heads = set(self.env.script.get_heads())
        states, errors = shard_states(self.settings, tenants)
        for t in tenants:
            st = states.get(t.schema)
            if st is None:
                shown = "(unreachable)"
            elif not st.exists:
                shown = "(no schema yet)"
            elif not st.heads:
                shown = "(base)"
            else:
                shown = " ".join(h + (" (head)" if h in heads else "") for h in st.heads)
            self.config.print_stdout(f"{t.shard} {t.schema} {shown}")
        if errors:
            raise PPPError("; ".join(errors.values()))

    # -- --sql ----------------------------------------------------------------------------------
    def offline(self) -> None:
        fn = step_function(self.env)
        if fn is None:
            raise PPPError(f"`{self.command} --sql` is not supported by the tenant environment")
        starting = self.env.get_starting_revision_argument()  # None: from base
        heads = tuple(self.env.script.get_revision(r).revision for r in as_tuple(starting))
        steps = Planner(self.env, fn)(heads)  # an unknown revision fails here, as Alembic says it
        request = self.config.attributes.get(RENDER_KEY)
        if isinstance(request, RenderRequest):
            request.rendered = render_steps(self.env, steps, heads, self.setup, None, self.memo)
            return
        self.write_sql(steps, heads, from_base=starting is None)

    def sql_for(self, steps: list[Any], heads: tuple[str, ...], tenant: str | None) -> str | None:
        """The SQL of ``steps`` (for ``tenant``, else schema-neutral); None when a revision
        needs the tenant and no tenant was given. Every revision that cannot be rendered is
        named, with why and where, in one error."""
        rendered = render_steps(self.env, steps, heads, self.setup, tenant, self.memo)
        blocked = [r for r in rendered.revisions if r.blocker is not None]
        if not blocked:
            return rendered.sql
        needs = [r for r in blocked if not (tenant is None and r.blocker and r.blocker.per_tenant)]
        if not needs:
            return None
        lines = "".join(f"\n  {r.label}: {r.blocker.reason()}" for r in needs if r.blocker)
        raise PPPError(
            f"cannot render the SQL offline: {len(needs)} revision(s) need the database "
            f"(PPP runs them online during upgrade; --sql cannot):{lines}"
        )

    def write_sql(self, steps: list[Any], heads: tuple[str, ...], from_base: bool) -> None:
        """Every tenant's SQL, a header per shard and tenant: on stdout, or a file per shard."""
        shared = self.sql_for(steps, heads, None)  # None: a tenant-specific revision
        by_shard = group_by_shard(self.tenants())
        out_dir = Path(self.options.sql_dir) if self.options.sql_dir else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        for shard, schemas in by_shard.items():
            with self.sql_stream(out_dir, shard) as stream:
                stream.write(f"-- PPP: shard {shard} ({len(schemas)} tenants)\n\n")
                for schema in schemas:
                    body = shared if shared is not None else self.sql_for(steps, heads, schema)
                    stream.write(_tenant_sql(shard, schema, from_base, body or ""))
        if out_dir:
            print(f"wrote {len(by_shard)} file(s) to {out_dir}", file=sys.stderr)

    @contextmanager
    def sql_stream(self, out_dir: Path | None, shard: str) -> Iterator[TextIO]:
        if out_dir is None:
            yield self.config.output_buffer or sys.stdout
            return
        with open(out_dir / f"{shard}.sql", "w") as stream:
            yield stream

    # -- autogenerate, check, history -i --------------------------------------------------------
    def other(self) -> None:
        """Commands that look at one database: use one template tenant's schema."""
        tenants = self.tenants()
        if self.options.template:
            tenants = [t for t in tenants if t.schema == self.options.template]
            if not tenants:
                raise PPPError(
                    f"-x template={self.options.template}: no such tenant in the catalog"
                )
        for tenant in tenants:
            if self.on_template(tenant):
                return
        raise PPPError(
            "no template tenant: no tenant in the catalog has its schema on its shard yet; "
            "run `alembic upgrade head` first or pass -x template=NAME"
        )

    def on_template(self, tenant: Tenant) -> bool:
        """Run the command on ``tenant``'s schema; False when the schema does not exist."""
        engine = db.engine(self.settings.shard(tenant.shard), "admin", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                exists = conn.exec_driver_sql(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %(s)s", {"s": tenant.schema}
                ).first()
                if not exists:
                    conn.rollback()
                    return False
                conn.exec_driver_sql(f"SET search_path TO {quote_ident(tenant.schema)}")
                conn.commit()
                # No version_table_schema: search_path already points at the tenant, and
                # autogenerate skips the version table only in the default schema.
                self.env.configure(connection=conn, **self.setup.options())
                with self.env.begin_transaction():
                    self.env.run_migrations()
                return True
        finally:
            engine.dispose()


def _tenant_sql(shard: str, schema: str, from_base: bool, body: str) -> str:
    q = quote_ident(schema)
    create = f"CREATE SCHEMA IF NOT EXISTS {q};\n" if from_base else ""
    return (
        f"-- PPP: shard {shard}, tenant {schema}\nBEGIN;\n{create}"
        f"SET LOCAL search_path TO {q};\n\n{body}COMMIT;\n\n"
    )


def run_migrations(target_metadata: Any = None, **configure_kw: Any) -> None:
    """The body of ``migrations/env.py``; PPPError becomes Alembic's ``FAILED: ...``."""
    FleetEnvironment.main(target_metadata=target_metadata, **configure_kw)
