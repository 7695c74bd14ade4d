"""Celery workers: score batches of rows, retrain models, write the analytics export."""
