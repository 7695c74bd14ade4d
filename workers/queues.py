"""Every queue and every task route, in one place. Add routes here, not in @task(queue=...)."""

from kombu import Queue

SCORING = "scoring"  # flags in near real time: short tasks only
TRAINING = "training"  # retrains and the export: long tasks, never ahead of a flag

QUEUES = (Queue(SCORING), Queue(TRAINING))

ROUTES = {
    "thronos.score_batch": {"queue": SCORING},
    "thronos.retrain_*": {"queue": TRAINING},
    "thronos.detect_quality_drops": {"queue": TRAINING},
    "thronos.refresh_analytics": {"queue": TRAINING},
    "thronos.write_analytics": {"queue": TRAINING},
}
