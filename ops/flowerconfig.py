"""Flower's configuration: `celery flower --conf ops/flowerconfig.py`.

Flower also reads any option from a ``FLOWER_<OPTION>`` environment variable, so setting
``FLOWER_CONF=/app/ops/flowerconfig.py`` (compose.yaml, the systemd unit) loads this file
whatever command line starts Flower. Command-line options still win over these values.
"""

import os

# "user:password"; several logins are separated by commas. Flower must not start without
# one: KeyError here stops it.
basic_auth = [cred for cred in os.environ["FLOWER_BASIC_AUTH"].split(",") if cred]

# Keep the task history in memory only: no shelve file of task arguments on disk.
persistent = False
max_tasks = 10000

# Served at the root (no reverse-proxy prefix).
url_prefix = ""

# Worker replicas get a new hostname whenever a container is recreated; forget offline
# workers after an hour so the dashboard and flower_worker_online show the live ones.
purge_offline_workers = 3600
