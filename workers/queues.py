"""Every queue and every task route, in one place. Add routes here, not in @task(queue=...)."""

from kombu import Queue

SCORING = "scoring"  # flags in near real time: short tasks only
TRAINING = "training"  # retrains and the export: long tasks, never ahead of a flag

QUEUES = (Queue(SCORING), Queue(TRAINING))


def is_amqp(broker_url: str | None) -> bool:
    return (broker_url or "").startswith(("amqp", "pyamqp", "amqps"))


def queues_for(broker_url: str | None) -> tuple[Queue, ...]:
    """On RabbitMQ, quorum queues: replicated, and safe across a broker node's loss."""
    if is_amqp(broker_url):
        return tuple(Queue(q.name, queue_arguments={"x-queue-type": "quorum"}) for q in QUEUES)
    return QUEUES


ROUTES = {
    "thronos.score_batch": {"queue": SCORING},
    "thronos.retrain_*": {"queue": TRAINING},
    "thronos.detect_quality_drops": {"queue": TRAINING},
    "thronos.detect_incidents": {"queue": TRAINING},
    "thronos.refresh_analytics": {"queue": TRAINING},
    "thronos.write_analytics": {"queue": TRAINING},
}
