"""Thronos AI ledger analytics: the command line, the local stack and the drain, on top of
core, producers, workers and analytics."""

from thronos_analytics import _compiled

_compiled.install()
