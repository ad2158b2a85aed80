"""Staged rollouts: ``ppp migrate --rollout FILE``, ``ppp rollout status|resume|abort``."""
