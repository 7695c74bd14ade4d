"""``thronos-analytics``: the one command line entry point."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from thronos_analytics import keys
from thronos_analytics.settings import settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)
DEMO_ROWS = 20_000

LedgerOpt = Annotated[Path | None, typer.Option(help="ledger file [env THRONOS_LEDGER]")]


def _use_ledger(ledger: Path | None) -> None:
    if ledger is not None:
        os.environ["THRONOS_LEDGER"] = str(ledger)


def _print_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")


@app.command()
def run(
    ledger: LedgerOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="scoring worker processes")] = 2,
    flower: Annotated[
        bool, typer.Option(help="also start Flower (auth: FLOWER_BASIC_AUTH)")
    ] = False,
    flower_port: Annotated[int, typer.Option(help="Flower's port")] = 5555,
    flower_no_auth: Annotated[bool, typer.Option(help="allow Flower without auth")] = False,
    drain: Annotated[bool, typer.Option(help="process the ledger, export, and exit")] = False,
    demo: Annotated[bool, typer.Option(help="seed a demo ledger if the ledger is empty")] = True,
) -> None:
    """Start Redis (unless REDIS_URL is set), workers, beat and the tail producer."""
    from thronos_analytics.stack import Stack

    _use_ledger(ledger)
    config = settings()
    if flower and not os.environ.get("FLOWER_BASIC_AUTH") and not flower_no_auth:
        raise typer.BadParameter("set FLOWER_BASIC_AUTH=user:password, or pass --flower-no-auth")
    if demo and (not config.ledger.exists() or config.ledger.stat().st_size == 0):
        _seed_demo(config.ledger)
    stack = Stack(
        config, workers=workers, beat=not drain, flower_port=flower_port if flower else None
    )
    if drain:
        # Train on the whole ledger before scoring it, instead of on its first rows.
        stack.env["THRONOS_MIN_TRAIN_ROWS"] = str(10**12)
    with stack:
        if drain:
            from thronos_analytics.drain import drain as drain_ledger

            summary = drain_ledger(config, stack.redis_url)
            _print_json(summary)
            return
        _serve(config, stack)


def _serve(config: Any, stack: Any) -> None:
    from producers.dead_letter import DeadLetter
    from producers.emit import send_batch
    from producers.tail import TailProducer
    from thronos_analytics import store
    from workers.tasks import refresh_signature

    r = store.connect(stack.redis_url)
    dead_letter = DeadLetter(config.rejected_file, config.ledger.name, r)
    tail = TailProducer(config.ledger, send_batch, dead_letter.record, config.batch_size)
    thread = threading.Thread(target=tail.run, name="tail", daemon=True)
    thread.start()
    console.print(f"[bold]Thronos analytics[/] on {config.ledger} (Redis {stack.redis_url})")
    console.print(f"  flags:     thronos-analytics flags --follow   (REDIS_URL={stack.redis_url})")
    console.print(f"  analytics: {config.analytics_json}")
    console.print(f"  rejected:  {config.rejected_file}")
    console.print("  Ctrl-C stops everything.")
    refreshed = False
    try:
        while True:
            stack.check()
            counts = store.counts(r)
            if not refreshed and tail.position.offset >= config.ledger.stat().st_size:
                # Caught up with the ledger: train and export now rather than at the next beat.
                refresh_signature(force=True).apply_async()
                refreshed = True
            console.print(
                f"seen {counts['interactions_seen']:,}  scored {counts['interactions_scored']:,}"
                f"  anomalies {counts['anomalies']:,}  rejected {counts['interactions_rejected']:,}"
                f"  waiting for a model {counts['pending']:,}"
            )
            time.sleep(5)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        tail.stop.set()
        thread.join(5)


def _seed_demo(ledger: Path) -> None:
    from analytics.simulate import SimConfig, write

    console.print(
        f"[yellow]{ledger} is empty: writing a DEMO ledger of {DEMO_ROWS:,} simulated "
        "interactions (not real data)[/]"
    )
    write(SimConfig(rows=DEMO_ROWS, seed=0, bad_rate=0.001), ledger)


@app.command()
def simulate(
    rows: Annotated[int, typer.Option(min=1)] = 20_000,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="ledger file to write")] = Path("data/ai_ledger.jsonl"),
    truth: Annotated[Path | None, typer.Option(help="also write the planted truth here")] = None,
    bad_rate: Annotated[float, typer.Option(help="share of malformed lines")] = 0.001,
) -> None:
    """Write a realistic synthetic ledger with planted personas, anomalies and a quality drop."""
    from analytics.simulate import SimConfig, write

    summary = write(SimConfig(rows=rows, seed=seed, bad_rate=bad_rate), out, truth)
    _print_json(summary)


@app.command()
def backfill(path: Annotated[Path, typer.Argument(help="ledger file to replay")]) -> None:
    """Replay a whole ledger file into the pipeline (idempotent: rows are keyed by id)."""
    from producers.backfill import backfill as replay_file
    from producers.dead_letter import DeadLetter
    from producers.emit import send_batch
    from thronos_analytics import store

    config = settings()
    dead_letter = DeadLetter(
        path.with_name(path.stem + ".rejected.jsonl"), path.name, store.connect()
    )
    replay = replay_file(path, send_batch, dead_letter.record)
    _print_json(
        {
            "lines": replay.lines,
            "rows": replay.rows,
            "rejected": replay.rejected,
            "batch_size": config.batch_size,
        }
    )


@app.command()
def tail(ledger: LedgerOpt = None) -> None:
    """Follow a ledger that another program writes, from a durable checkpoint."""
    from producers.dead_letter import DeadLetter
    from producers.emit import send_batch
    from producers.tail import TailProducer
    from thronos_analytics import store

    _use_ledger(ledger)
    config = settings()
    dead_letter = DeadLetter(config.rejected_file, config.ledger.name, store.connect())
    producer = TailProducer(config.ledger, send_batch, dead_letter.record, config.batch_size)
    with contextlib.suppress(KeyboardInterrupt):
        producer.run()


@app.command()
def recommend(
    use_case: Annotated[str, typer.Option(help="e.g. coding, research, writing")],
    wallet: Annotated[str | None, typer.Option(help="personalise for this wallet")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="latency budget")] = None,
    max_credits: Annotated[float | None, typer.Option(help="cost budget per call")] = None,
    top: Annotated[int, typer.Option(min=1)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts")] = False,
) -> None:
    """Suggest providers for a use case, from the latest ai_analytics.json."""
    from analytics.recommend import rank

    path = settings().analytics_json
    try:
        model = orjson.loads(path.read_bytes())["recommendations"]["model"]
    except FileNotFoundError:
        raise typer.BadParameter(
            f"{path} does not exist yet; run `thronos-analytics run`"
        ) from None
    ranked = rank(model, use_case, wallet, max_latency_ms, max_credits, top)
    if as_json:
        _print_json(ranked)
        return
    if not ranked:
        known = ", ".join(sorted(model["use_cases"])) or "none yet"
        console.print(f"no provider fits use case {use_case!r} within the budget (known: {known})")
        raise typer.Exit(1)
    for i, choice in enumerate(ranked, 1):
        print(f"{i}. {choice['provider']:<10} weight {choice['weight']:.2f}  {choice['reason']}")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts")] = False,
) -> None:
    """Rows seen, scored and rejected, queue depth, models and their ages, last export."""
    from thronos_analytics import store
    from workers.queues import QUEUES

    r = store.connect()
    now = time.time()
    report: dict[str, Any] = store.counts(r)
    report["queues"] = {q.name: r.llen(q.name) for q in QUEUES}
    report["models"] = {}
    for name in keys.MODEL_NAMES:
        info = store.model_info(r, name) or {}
        failure = r.get(keys.model_failure(name))
        report["models"][name] = {
            "version": info.get("version"),
            "age_s": round(now - info["trained_at"], 1) if info else None,
            "n_samples": info.get("n_samples"),
            "last_failure": orjson.loads(failure) if failure else None,
        }
    report["last_export"] = {k.decode(): v.decode() for k, v in r.hgetall(keys.EXPORT).items()}
    if as_json:
        _print_json(report)
        return
    for key in (
        "interactions_seen",
        "interactions_scored",
        "interactions_rejected",
        "anomalies",
        "pending",
    ):
        print(f"{key.replace('_', ' '):<24}{report[key]:>12,}")
    for queue, depth in report["queues"].items():
        print(f"queue {queue:<18}{depth:>12,}")
    for name, model in report["models"].items():
        age = "never trained" if model["age_s"] is None else f"{model['age_s']:.0f}s old"
        failed = (
            "  LAST RETRAIN FAILED: " + model["last_failure"]["error"]
            if model["last_failure"]
            else ""
        )
        print(f"model {name:<18}{age:>12}  {model['version'] or ''}{failed}")
    export = report["last_export"]
    print(f"last export             {export.get('path', 'none')}")


@app.command()
def flags(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="wait for new flags")] = False,
    last: Annotated[int, typer.Option(help="how many recent flags to print first")] = 10,
) -> None:
    """Print flags as JSON lines, the last few and then, with --follow, each new one."""
    from thronos_analytics import store

    r = store.connect()
    recent = list(reversed(r.xrevrange(keys.FLAG_STREAM, count=last)))
    cursor = recent[-1][0] if recent else b"$"
    for _, fields in recent:
        sys.stdout.buffer.write(fields[b"f"] + b"\n")
    sys.stdout.flush()
    while follow:
        for _, entries in r.xread({keys.FLAG_STREAM: cursor}, block=1000, count=1000) or []:
            for entry_id, fields in entries:
                sys.stdout.buffer.write(fields[b"f"] + b"\n")
                cursor = entry_id
            sys.stdout.flush()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    queues: Annotated[str, typer.Option(help="comma-separated queues")] = "scoring,training",
    concurrency: Annotated[int, typer.Option(min=1)] = 2,
    name: Annotated[str, typer.Option(help="worker name")] = "worker",
) -> None:
    """A Celery worker (extra arguments go to `celery worker`)."""
    from thronos_analytics.stack import worker_command

    command = worker_command(name, queues, concurrency, "INFO") + list(ctx.args)
    os.execv(command[0], command)


@app.command()
def beat() -> None:
    """Celery beat; only the holder of a Redis lock schedules, so a second beat idles."""
    from thronos_analytics.stack import celery_command

    command = celery_command("beat", "-l", "INFO")
    os.execv(command[0], command)


@app.command()
def flower(
    port: Annotated[int, typer.Option()] = 5555,
    no_auth: Annotated[bool, typer.Option(help="allow Flower without auth")] = False,
) -> None:
    """Flower, with basic auth from FLOWER_BASIC_AUTH (user:password)."""
    from thronos_analytics.stack import celery_command

    if not os.environ.get("FLOWER_BASIC_AUTH") and not no_auth:
        raise typer.BadParameter("set FLOWER_BASIC_AUTH=user:password, or pass --no-auth")
    command = celery_command("flower", f"--port={port}")
    os.execv(command[0], command)


@app.command()
def metrics(port: Annotated[int, typer.Option()] = 9108) -> None:
    """Serve Prometheus metrics on :PORT/metrics, read from Redis at each scrape."""
    from prometheus_client import REGISTRY, start_http_server

    from thronos_analytics import store
    from thronos_analytics.metrics import RedisCollector

    REGISTRY.register(RedisCollector(store.connect()))
    start_http_server(port)
    console.print(f"metrics on http://0.0.0.0:{port}/metrics")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app()


if __name__ == "__main__":
    main()
