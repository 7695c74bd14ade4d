"""Task names are part of the message format: queued messages name their task.

Given the Celery app, when its tasks are listed, then they are exactly these. A rename
must update this list on purpose, and drain the queues before deploying.
"""

from thronos_analytics.workers.celery_app import app

EXPECTED = {
    "thronos.score_batch",
    "thronos.retrain_anomaly",
    "thronos.retrain_profiles",
    "thronos.retrain_recommender",
    "thronos.detect_quality_drops",
    "thronos.detect_incidents",
    "thronos.write_analytics",
    "thronos.refresh_analytics",
}


def test_registered_task_names_are_stable():
    app.loader.import_default_modules()
    names = {name for name in app.tasks if not name.startswith("celery.")}
    assert names == EXPECTED


def test_every_task_has_a_route_to_a_declared_queue():
    from thronos_analytics.core.messages import QUEUES, SCORING

    router = app.amqp.router
    declared = {q.name for q in QUEUES}
    for name in EXPECTED:
        queue = router.route({}, name)["queue"].name
        assert queue in declared, name
        # Only scoring may run on the scoring queue: a retrain there would delay flags.
        assert (queue == SCORING) == (name == "thronos.score_batch"), name
