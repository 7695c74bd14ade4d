"""Pure analytics on ledger rows: the row contract, features and models.

Nothing here knows about Redis or Celery, so it can be tested, benchmarked and reused alone.
"""
