"""Thronos AI ledger analytics: command line, settings and the shared Redis key space."""
