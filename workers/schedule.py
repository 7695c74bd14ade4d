"""The beat schedule. Each entry expires before its next run, so a backlog is dropped, not
replayed: a stale retrain is worth nothing once a newer one is due."""

from thronos_analytics.core.settings import settings


def beat_schedule() -> dict:
    every = settings().retrain_seconds
    return {
        "refresh-analytics": {
            "task": "thronos.refresh_analytics",
            "schedule": every,
            "options": {"expires": every * 0.9},
        },
    }
