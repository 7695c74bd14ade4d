"""Producers: rows into the pipeline, from the ledger writer, a tailed ledger, or a backfill."""
