#!/usr/bin/env python3
"""The application's fast path: each tenant's queries straight to its shard.

Run it after `make demo` (servers up, `ppp init`, `ppp migrate`), from the project folder:

    .venv/bin/python examples/routing_example.py

The same question as `ppp demo` asks the veneer, asked of each tenant's shard directly,
then an ORM write with the retry a moved tenant needs.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Text, Uuid, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ppp_env.routing import TenantMoved, TenantRouter
from ppp_env.settings import load_settings


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"  # no schema: the router selects the tenant's
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    first_name: Mapped[str] = mapped_column(Text)
    last_name: Mapped[str] = mapped_column(Text)


def main() -> None:
    settings = load_settings()  # .env (or PPP_ENV=name: .env.name), as every ppp command
    with TenantRouter(settings) as router:  # one pool per shard, placement cached
        for tenant in ("bluth_co", "cyberdyne", "initech"):
            with router.connect(tenant) as conn:  # search_path = the tenant, on its shard
                rows = conn.execute(
                    text("SELECT first_name, last_name FROM authors WHERE first_name = :n"),
                    {"n": "Ernest"},
                ).all()
            print(f"{tenant}: {', '.join(f'{first} {last}' for first, last in rows)}")

        for attempt in range(3):  # a move finishing mid-transaction: retry once more
            try:
                with router.session("initech") as session:
                    session.add(Author(first_name="Example", last_name=f"Writer {attempt}"))
                    session.flush()
                    print("initech: wrote an author through the ORM (rolled back)")
                    session.rollback()  # leave the demo's data as it was
                break
            except TenantMoved as exc:
                print(f"retrying: {exc}")


if __name__ == "__main__":
    main()
