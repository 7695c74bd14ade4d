"""The Redis client of a process, its locks, and which Redis it is."""

from __future__ import annotations

import contextlib
from functools import cache

import redis
from redis import Redis

from thronos_analytics.core import keys
from thronos_analytics.core.settings import settings


@cache
def connect(url: str | None = None) -> Redis:
    """One client per process and URL; redis-py makes its pool safe across fork."""
    url = url or settings().redis_url
    if not url:
        raise RuntimeError("REDIS_URL is not set; `thronos-analytics run` starts a Redis for you")
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=2, health_check_interval=30
    )


def lock(r: Redis, name: str, ttl: float) -> redis.lock.Lock:
    """The lock ``thronos:lock:<name>`` (redis-py's): a token of its own, expiring after
    ``ttl`` seconds unless taken again, so a holder that died lets go."""
    return r.lock(keys.lock(name), timeout=ttl, blocking=False, thread_local=False)


def hold(lock: redis.lock.Lock) -> bool:
    """Take ``lock``, or extend it if this holder has it; False while another holds it."""
    if lock.local.token is not None:
        try:
            return bool(lock.reacquire())
        except redis.exceptions.LockError:  # expired, and maybe taken by another
            lock.local.token = None
    return bool(lock.acquire(blocking=False))


def run_id(r: Redis) -> str:
    """Redis's ``run_id``: it changes when Redis restarts."""
    return str(r.info("server")["run_id"])




def release(lock: redis.lock.Lock) -> None:
    """Let go of ``lock``; one that expired meanwhile is already gone."""
    with contextlib.suppress(redis.exceptions.LockError):
        lock.release()


def local_server_ready(port: int) -> bool:
    """Whether the redis-server on loopback ``port`` answers and has loaded its data."""
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        return client.info("persistence").get("loading", 0) == 0
    except redis.ConnectionError:
        return False
    except redis.ResponseError as exc:  # LOADING a large AOF
        if "LOADING" not in str(exc):
            raise
        return False
    finally:
        client.close()


def local_key_count(port: int) -> int | None:
    """How many keys the redis-server on loopback ``port`` holds; None if it does not answer."""
    client = redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=2)
    try:
        return int(client.dbsize())  # type: ignore[arg-type]
    except redis.RedisError:
        return None
    finally:
        client.close()
