"""The 14-revision benchmark chain's tenant environment: the same PPP runner as migrations/env.py.

``versions/`` holds the twelve revisions both twins share; ``online/`` and ``renderable/``
hold the two that differ (same revision ids, same effect): the ini chooses one of them
through ``version_locations`` (see benchmarks/migrate_fleet.py).
"""

from ppp_env.fleet.env import run_migrations

run_migrations()
