"""Thronos AI ledger analytics: the command line, the local stack and the drain, on top of
core, producers, workers and analytics."""
