"""The Redis client of a process, its locks, and which Redis it is."""

from __future__ import annotations

import contextlib
from functools import cache
from typing import TypeAlias

import redis
from redis import Redis
from redis.cluster import RedisCluster

from thronos_analytics.core import keys
from thronos_analytics.core.settings import settings

# What connect() returns: a Redis Cluster client when THRONOS_REDIS_CLUSTER is set.
Client: TypeAlias = Redis | RedisCluster


def connect(url: str | None = None) -> Client:
    """One client per process, URL and mode; redis-py makes its pool safe across fork.
    With ``THRONOS_REDIS_CLUSTER``, ``url`` names any node of the cluster."""
    config = settings()
    return _connect(url or config.redis_url, config.redis_cluster)


@cache
def _connect(url: str | None, cluster: bool) -> Client:
    if not url:
        raise RuntimeError("REDIS_URL is not set; `thronos-analytics run` starts a Redis for you")
    if cluster:
        # Node connections take no health_check_interval (redis-py drops it): a stale one
        # fails its command, and the cluster client retries on a fresh connection.
        return RedisCluster.from_url(url, socket_timeout=10, socket_connect_timeout=2)
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=2, health_check_interval=30
    )


def lock(r: Client, name: str, ttl: float) -> redis.lock.Lock:
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


def run_id(r: Client) -> str:
    """Redis's ``run_id``: it changes when Redis restarts. On a cluster, every node's, by
    node: it changes when any node restarts, or one joins or leaves."""
    if isinstance(r, RedisCluster):
        # INFO goes to one node by default: ask each node the client knows, by name.
        ids = {n.name: r.get_redis_connection(n).info("server")["run_id"] for n in r.get_nodes()}
        return ",".join(f"{name}={ids[name]}" for name in sorted(ids))
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
