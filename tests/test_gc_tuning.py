"""``fewer_collections``: the collector runs less often during a command, and everything is
as it was afterwards (an application that calls PPP keeps its own settings)."""

from __future__ import annotations

import gc

import pytest

from ppp_env.gc_tuning import THRESHOLD, fewer_collections


def test_fewer_collections_during_the_block_and_restored_after() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with fewer_collections():
        assert gc.get_threshold()[0] == THRESHOLD
        assert gc.get_freeze_count() > frozen  # what was alive is left out of collections
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_restored_when_the_command_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(SystemExit), fewer_collections():
        raise SystemExit(1)  # click ends every command this way
    assert gc.get_threshold() == before
