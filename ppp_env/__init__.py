"""PPP, the PostgreSQL Partition Proxy: the library behind the ``ppp`` CLI and the env.py files."""

from __future__ import annotations

from ppp_env.errors import PPPError

__all__ = ["PPPError"]
__version__ = "0.1.0"
