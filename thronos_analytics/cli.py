"""``thronos-analytics``: the one command line entry point."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import orjson
import rich
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from thronos_analytics import keys, logs
from thronos_analytics.settings import Settings, rejected_file, settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# One console, on stderr, shared with every rich display (the backfill's progress bar
# included): stdout carries only a command's own output, and two displays never fight.
rich.reconfigure(stderr=True)
console = rich.get_console()
log = logging.getLogger("thronos.cli")
DEMO_ROWS = 20_000

LedgerOpt = Annotated[
    list[Path] | None,
    typer.Option(
        help="ledger file; repeat for several (env THRONOS_LEDGER: paths separated by ':')"
    ),
]


def _fail(message: str) -> typer.Exit:
    """A usage error as one line on stderr, exit code 2 (as click's own)."""
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    return typer.Exit(2)


def _check_ledgers(ledgers: Iterable[Path], named: bool, origin: str, must_exist: bool) -> None:
    """Refuse a ledger that can never be read, before anything is started or created.

    A missing file in an existing folder is fine to follow (it is read once it appears),
    except with ``must_exist``. The default ledger's folder is the data dir, which ``run``
    creates, so its absence is an error only for a ledger the user named."""
    seen: dict[Path, Path] = {}
    origin = f" ({origin})" if origin else ""
    for path in ledgers:
        if path.is_dir():
            raise _fail(f"ledger {path}{origin} is a directory, not a file")
        if named and not path.parent.is_dir():
            raise _fail(f"ledger {path}{origin}: folder {path.parent} does not exist")
        if must_exist and not path.exists():
            raise _fail(f"ledger {path}{origin} does not exist")
        # Two ledgers appending to one dead-letter file would mix up their line numbers.
        other = seen.setdefault(rejected_file(path), path)
        if other != path:
            raise _fail(f"ledgers {other} and {path} would share {rejected_file(path)}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _print_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def _progress() -> Progress:
    """A progress display on the terminal; nothing at all when stderr is not one."""
    return Progress(
        SpinnerColumn(),
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


def _write_ledger(cfg: Any, out: Path, truth: Path | None = None) -> dict:
    from analytics.simulate import write

    lines = cfg.rows + int(round(cfg.bad_rate * cfg.rows))
    with _progress() as progress:
        task = progress.add_task(f"writing {out}", total=lines)
        return write(cfg, out, truth, progress=lambda n: progress.update(task, completed=n))


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _drain(config: Settings, ledgers: tuple[Path, ...], redis_url: str) -> dict:
    """``drain``, with bars for rows ingested and flagged when on a terminal."""
    from thronos_analytics import store
    from thronos_analytics.drain import drain

    if not console.is_terminal:
        return drain(config, redis_url, ledgers)
    r = store.connect(redis_url)
    lines = sum(_count_lines(path) for path in ledgers if path.exists())
    before = store.counts(r)
    finished = threading.Event()
    with _progress() as progress:
        ingested = progress.add_task("new rows ingested", total=lines)
        flagged = progress.add_task("new rows flagged", total=lines)

        def poll() -> None:
            while not finished.wait(0.25):
                now = store.counts(r)
                for task, key in (
                    (ingested, "interactions_seen"),
                    (flagged, "interactions_scored"),
                ):
                    progress.update(task, completed=now[key] - before[key])

        thread = threading.Thread(target=poll, name="drain-progress", daemon=True)
        thread.start()
        try:
            return drain(config, redis_url, ledgers)
        finally:
            finished.set()
            thread.join()


@app.command()
def run(
    ledger: LedgerOpt = None,
    workers: Annotated[int, typer.Option(min=1, help="scoring worker processes")] = 2,
    flower: Annotated[
        bool, typer.Option(help="also start Flower (auth: FLOWER_BASIC_AUTH)")
    ] = False,
    flower_port: Annotated[int, typer.Option(help="Flower's port")] = 5555,
    flower_no_auth: Annotated[bool, typer.Option(help="allow Flower without auth")] = False,
    drain: Annotated[bool, typer.Option(help="process the ledgers, export, and exit")] = False,
    demo: Annotated[
        bool,
        typer.Option(
            help="with no --ledger or THRONOS_LEDGER and an empty default ledger, also follow "
            "a demo file of simulated rows ($THRONOS_DATA_DIR/demo.ai_ledger.jsonl)"
        ),
    ] = True,
) -> None:
    """Start Redis (unless REDIS_URL is set), workers, beat and a tail producer per ledger."""
    from thronos_analytics.stack import Stack

    config = settings(ledger or ())
    if flower:
        _check_flower_auth("--flower-no-auth", flower_no_auth)
    _check_ledgers(config.ledgers, config.ledger_named, _origin(ledger, config), must_exist=False)
    ledgers = config.ledgers
    # A ledger the user named is their data: simulated rows never go into it.
    if demo and not config.ledger_named and _size(config.default_ledger) == 0:
        ledgers = (config.default_ledger, _demo_ledger(config))
    stack = Stack(
        config, workers=workers, beat=not drain, flower_port=flower_port if flower else None
    )
    if drain:
        # Train on the whole ledger before scoring it, instead of on its first rows.
        stack.env["THRONOS_MIN_TRAIN_ROWS"] = str(10**12)
    with stack:
        if flower:
            _print_flower(flower_port)
        if drain:
            _print_json(_drain(config, ledgers, stack.redis_url))
            return
        _serve(config, ledgers, stack)


def _origin(ledger: list[Path] | None, config: Settings) -> str:
    if ledger:
        return "from --ledger"
    return "from THRONOS_LEDGER" if config.ledger_named else "the default ledger"


def _ledger_tail(config: Settings, ledger: Path, r: Any) -> Any:
    """The tail producer on one ledger: rows to scoring, bad lines to its dead letters."""
    from producers.dead_letter import DeadLetter
    from producers.emit import send_batch
    from producers.tail import TailProducer

    dead_letter = DeadLetter(rejected_file(ledger), ledger.name, r)
    return TailProducer(ledger, send_batch, dead_letter.record, config.batch_size, confirm_with=r)


def _follow(
    config: Settings, ledgers: tuple[Path, ...], r: Any
) -> list[tuple[Any, threading.Thread]]:
    """A tail producer thread per ledger, each with its own checkpoint beside its file."""
    tails = []
    for i, path in enumerate(ledgers, 1):
        tail = _ledger_tail(config, path, r)
        thread = threading.Thread(target=tail.run, name=f"tail{i}", daemon=True)
        thread.start()
        tails.append((tail, thread))
    return tails


def _stop(tails: list[tuple[Any, threading.Thread]]) -> None:
    for tail, _ in tails:
        tail.stop.set()
    for _, thread in tails:
        thread.join(5)


def _serve(config: Settings, ledgers: tuple[Path, ...], stack: Any) -> None:
    from thronos_analytics import store
    from workers.tasks import refresh_analytics

    r = store.connect(stack.redis_url)
    tails = _follow(config, ledgers, r)
    console.print(f"[bold]Thronos analytics[/] (Redis {stack.redis_url})")
    for path in ledgers:
        console.print(f"  ledger:    {path}", soft_wrap=True)
        console.print(f"  rejected:  {rejected_file(path)}", soft_wrap=True)
    console.print(
        f"  flags:     thronos-analytics flags --follow   (REDIS_URL={stack.redis_url})",
        soft_wrap=True,
    )
    console.print(f"  analytics: {config.analytics_json}", soft_wrap=True)
    console.print("  Ctrl-C stops everything.")
    refreshed = False
    try:
        while True:
            stack.check()
            counts = store.counts(r)
            caught_up = all(t.position.offset >= _size(t.ledger) for t, _ in tails)
            if not refreshed and caught_up:
                # Caught up with every ledger: train and export now rather than at the next beat.
                refresh_analytics.delay(force=True)
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
        _stop(tails)


def _demo_ledger(config: Settings) -> Path:
    """The demo file, written once: its own file, so no real ledger ever holds demo rows."""
    from analytics.simulate import SimConfig

    demo = config.demo_ledger
    if _size(demo) == 0:
        _write_ledger(SimConfig(rows=DEMO_ROWS, seed=0, bad_rate=0.001), demo)
    console.print(
        f"[yellow]DEMO: {config.default_ledger} has no rows yet, so run also follows "
        f"{_count_lines(demo):,} simulated interactions (not real data) in {demo}; "
        f"real rows go to {config.default_ledger}[/]",
        soft_wrap=True,
    )
    return demo


@app.command()
def simulate(
    rows: Annotated[int, typer.Option(min=1)] = 20_000,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="file to write (default: $THRONOS_DATA_DIR/simulated.ai_ledger.jsonl)"),
    ] = None,
    truth: Annotated[Path | None, typer.Option(help="also write the planted truth here")] = None,
    bad_rate: Annotated[float, typer.Option(help="share of malformed lines")] = 0.001,
    force: Annotated[bool, typer.Option(help="overwrite a file that has lines")] = False,
) -> None:
    """Write a realistic synthetic ledger with planted personas, anomalies and a quality drop."""
    from analytics.simulate import SimConfig

    out = out or settings().simulated_ledger
    if out.is_dir():
        raise _fail(f"--out {out} is a directory, not a file")
    # A file with lines may be someone's ledger: replacing it loses their data.
    if _size(out) > 0 and not force:
        raise _fail(f"{out} already has lines; pass --force to overwrite it, or another --out")
    _print_json(_write_ledger(SimConfig(rows=rows, seed=seed, bad_rate=bad_rate), out, truth))


@app.command()
def backfill(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="PATH", help="ledger files to replay (default: --ledger, else THRONOS_LEDGER)"
        ),
    ] = None,
    ledger: LedgerOpt = None,
) -> None:
    """Replay whole ledger files into the pipeline, one after the other (idempotent: rows
    are keyed by id).

    Returns once Redis has seen every row, sending again any that were lost on the way."""
    from producers.backfill import backfill as replay_file
    from producers.dead_letter import DeadLetter
    from producers.emit import send_batch
    from thronos_analytics import store

    named = [*(paths or ()), *(ledger or ())]
    config = settings(named)
    origin = "" if paths else _origin(ledger, config)
    _check_ledgers(config.ledgers, True, origin, must_exist=True)
    r = store.connect()
    replays: list[dict[str, Any]] = []
    for path in config.ledgers:
        dead_letter = DeadLetter(rejected_file(path), path.name, r)
        replay = replay_file(path, send_batch, dead_letter.record, confirm_with=r)
        replays.append(
            {
                "ledger": str(path),
                "lines": replay.lines,
                "rows": replay.rows,
                "rejected": replay.rejected,
                "events": replay.events,
            }
        )
    totals = {k: sum(int(e[k]) for e in replays) for k in ("lines", "rows", "rejected", "events")}
    _print_json({**totals, "batch_size": config.batch_size, "ledgers": replays})


@app.command()
def tail(ledger: LedgerOpt = None) -> None:
    """Follow ledgers that another program writes, each from its own durable checkpoint."""
    from thronos_analytics import store

    config = settings(ledger or ())
    _check_ledgers(config.ledgers, config.ledger_named, _origin(ledger, config), must_exist=False)
    tails = _follow(config, config.ledgers, store.connect())
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(tails)


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
    """One screen: throughput, lag, backlog, rejections, anomaly rate, models, last export."""
    from thronos_analytics import store

    report = _status_report(store.connect())
    if as_json:
        _print_json(report)
        return
    _print_status(report)


# The recent anomaly rate is read from this many of the newest scored batches.
RATE_SAMPLE_BATCHES = 20


def _status_report(r: Any) -> dict[str, Any]:
    from thronos_analytics import store
    from thronos_analytics.metrics import LAG_BUCKETS

    now = time.time()
    report: dict[str, Any] = store.counts(r)
    report["queues"] = _queue_depths(r)
    report["backlog"] = {
        "queued_messages": sum(report["queues"].values()),
        "rows_waiting_for_a_model": report["pending"],
    }
    report["throughput"] = _throughput(r, now)
    report["lag"] = _lag_summary(r, LAG_BUCKETS)
    scored = report["interactions_scored"]
    by_provider = {k.decode(): int(v) for k, v in r.hgetall(keys.ANOMALIES_BY_PROVIDER).items()}
    report["anomaly_rate"] = {
        "overall": round(report["anomalies"] / scored, 5) if scored else None,
        "recent": report["throughput"].pop("recent_anomaly_rate"),
        "by_provider": dict(sorted(by_provider.items(), key=lambda kv: -kv[1])),
    }
    last = r.xrevrange(keys.REJECTED_STREAM, count=1)
    report["last_rejection"] = orjson.loads(last[0][1][b"r"]) if last else None
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
    report["warnings"] = [orjson.loads(v).get("message", "") for v in r.hvals(keys.WARNINGS)]
    report["last_export"] = {k.decode(): v.decode() for k, v in r.hgetall(keys.EXPORT).items()}
    generated = report["last_export"].get("generated_at")
    report["last_export_age_s"] = round(now - float(generated), 1) if generated else None
    return report


def _queue_depths(r: Any) -> dict[str, int]:
    """Messages waiting per queue, asked of the broker (Redis or RabbitMQ)."""
    from workers.queues import QUEUES, is_amqp

    if not is_amqp(settings().broker_url):
        return {q.name: r.llen(q.name) for q in QUEUES}
    from workers.celery_app import app as celery_app

    depths = {}
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.default_channel
        for q in QUEUES:
            try:
                depths[q.name] = channel.queue_declare(q.name, passive=True).message_count
            except Exception:  # not declared yet: no worker has started
                channel = connection.channel()
                depths[q.name] = 0
    return depths


def _throughput(r: Any, now: float) -> dict[str, Any]:
    minute = int(now // 60)
    counts = r.mget(keys.scored_in_minute(minute), keys.scored_in_minute(minute - 1))
    this, previous = (int(n or 0) for n in counts)
    # The last 60 s: this minute so far, and the part of the previous one still inside them.
    share = 1.0 - (now % 60) / 60
    latest = r.xrevrange(keys.FLAG_STREAM, count=RATE_SAMPLE_BATCHES)
    recent = [flag for _, fields in latest for flag in orjson.loads(fields[b"f"])]
    last_minute = this + round(previous * share)
    return {
        "rows_scored_last_minute": last_minute,
        "rows_per_s": round(last_minute / 60, 1),
        "estimated": bool(previous),
        "last_flag_age_s": (
            round(now - int(latest[0][0].split(b"-")[0]) / 1000, 1) if latest else None
        ),
        "recent_anomaly_rate": (
            round(sum(bool(f.get("is_anomaly")) for f in recent) / len(recent), 5)
            if recent
            else None
        ),
    }


def _lag_summary(r: Any, buckets: tuple[float, ...]) -> dict[str, Any]:
    """Count, mean and bucket-bound quantiles of the ledger-write-to-flag lag."""
    raw = {k.decode(): float(v) for k, v in r.hgetall(keys.LAG_HISTOGRAM).items()}
    bounds = [*map(str, buckets), "+Inf"]
    count = sum(raw.get(b, 0.0) for b in bounds)
    summary: dict[str, Any] = {"count": int(count), "mean_s": None, "p50_le_s": None}
    summary["p95_le_s"] = None
    if not count:
        return summary
    summary["mean_s"] = round(raw.get("sum", 0.0) / count, 4)
    for q in (50, 95):
        cumulative = 0.0
        for bound in bounds:
            cumulative += raw.get(bound, 0.0)
            if cumulative >= count * q / 100:
                summary[f"p{q}_le_s"] = float(bound) if bound != "+Inf" else None
                summary[f"p{q}_over_s"] = buckets[-1] if bound == "+Inf" else None
                break
    return summary


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.3g}s"


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{_duration(seconds)} ago"


def _lag_text(lag: dict[str, Any], q: int) -> str:
    if lag.get(f"p{q}_le_s") is not None:
        return f"≤ {lag[f'p{q}_le_s']:g} s"
    if lag.get(f"p{q}_over_s") is not None:
        return f"> {lag[f'p{q}_over_s']:g} s"
    return "–"


def _print_status(report: dict[str, Any]) -> None:
    from rich.columns import Columns
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table

    out = Console()
    rate = report["anomaly_rate"]
    throughput = report["throughput"]
    lag = report["lag"]

    def grid() -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_column(style="dim")
        return table

    flow = grid()
    flow.add_row("rows seen", f"{report['interactions_seen']:,}", "")
    flow.add_row("rows scored", f"{report['interactions_scored']:,}", "")
    approx = "≈" if throughput["estimated"] else ""
    flow.add_row(
        "throughput",
        f"{approx}{throughput['rows_scored_last_minute']:,}/min",
        f"last flag {_age(throughput['last_flag_age_s'])}",
    )
    flow.add_row(
        "lag p50 / p95",
        f"{_lag_text(lag, 50)} / {_lag_text(lag, 95)}",
        f"mean {_duration(lag['mean_s'])}" if lag["mean_s"] is not None else "no rows yet",
    )
    rejected_style = "yellow" if report["interactions_rejected"] else ""
    reason = (report["last_rejection"] or {}).get("reason", "")
    flow.add_row(
        "rejected",
        f"[{rejected_style}]{report['interactions_rejected']:,}[/]" if rejected_style else "0",
        f"last: {reason[:40]}" if reason else "",
    )

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{x:.2%}"

    top = ", ".join(f"{p} {n:,}" for p, n in list(rate["by_provider"].items())[:3])
    flow.add_row(
        "anomaly rate",
        pct(rate["overall"]),
        f"last {RATE_SAMPLE_BATCHES} batches {pct(rate['recent'])}",
    )
    flow.add_row("anomalies", f"{report['anomalies']:,}", top)

    backlog = grid()
    for queue, depth in report["queues"].items():
        backlog.add_row(f"queue {queue}", f"[yellow]{depth:,}[/]" if depth else "0", "messages")
    backlog.add_row("waiting for model", f"{report['pending']:,}", "rows")

    models = Table(box=None, padding=(0, 1), show_edge=False)
    for column in ("model", "version", "age", "rows"):
        models.add_column(column, justify="right" if column in ("age", "rows") else "left")
    failures = []
    for name, model in report["models"].items():
        n = model["n_samples"]
        models.add_row(
            name,
            model["version"] or "[yellow]never trained[/]",
            _age(model["age_s"]) if model["age_s"] is not None else "–",
            f"{n:,}" if n is not None else "–",
        )
        if model["last_failure"]:
            error = model["last_failure"].get("error", "")
            failures.append(f"[red]{name}: last retrain failed: {error[:70]}[/]")

    export = report["last_export"]
    export_line = (
        f"{export['path']}  ({_age(report['last_export_age_s'])}, "
        f"{float(export.get('duration_s', 0)):.2f} s)"
        if export
        else "[yellow]no export yet[/]"
    )
    footer = [f"[bold]last export[/]  {export_line}", *failures]
    footer += [f"[yellow]warning[/] {w}" for w in report["warnings"][:3]]
    if len(report["warnings"]) > 3:
        footer.append(f"[yellow]… {len(report['warnings']) - 3} more warnings[/]")
    out.print(
        Columns(
            [
                Panel(flow, title="pipeline", expand=False),
                Panel(Group(backlog), title="backlog", expand=False),
                Panel(models, title="models", expand=False),
            ]
        )
    )
    for line in footer:
        out.print(line, overflow="fold")


@app.command()
def flags(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="wait for new flags")] = False,
    last: Annotated[int, typer.Option(help="how many recent flags to print first")] = 10,
) -> None:
    """Print flags as JSON lines, the last few and then, with --follow, each new one."""
    from thronos_analytics import store

    r = store.connect()
    # Each entry holds a batch of flags: read back until ``last`` flags are in hand.
    recent: list[bytes] = []
    entries = r.xrevrange(keys.FLAG_STREAM, count=last)
    for _, fields in entries:
        recent[:0] = [orjson.dumps(flag) for flag in orjson.loads(fields[b"f"])]
        if len(recent) >= last:
            break
    cursor = entries[0][0] if entries else b"$"
    _print_lines(recent[-last:] if last else [])
    while follow:
        for _, batch in r.xread({keys.FLAG_STREAM: cursor}, block=1000, count=100) or []:
            for entry_id, fields in batch:
                _print_lines(orjson.dumps(flag) for flag in orjson.loads(fields[b"f"]))
                cursor = entry_id


def _print_lines(lines: Iterable[bytes]) -> None:
    sys.stdout.buffer.writelines(line + b"\n" for line in lines)
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

    _check_flower_auth("--no-auth", no_auth)
    _print_flower(port)
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


def _check_flower_auth(no_auth_flag: str, no_auth: bool) -> None:
    """Flower reads FLOWER_BASIC_AUTH itself; refuse to start it open by accident."""
    logins = os.environ.get("FLOWER_BASIC_AUTH", "")
    if not logins:
        if no_auth:
            console.print("[yellow]Flower without a login: anyone who reaches the port sees it[/]")
            return
        raise typer.BadParameter(
            f"Flower needs a login: set FLOWER_BASIC_AUTH=user:password, or pass {no_auth_flag}"
        )
    for login in logins.split(","):
        user, _, password = login.partition(":")
        if not user or not password:
            raise typer.BadParameter(
                "FLOWER_BASIC_AUTH must be user:password (several separated by commas); "
                f"got an entry without {'a user' if not user else 'a password'}"
            )


def _print_flower(port: int) -> None:
    user = os.environ.get("FLOWER_BASIC_AUTH", "").partition(":")[0]
    login = f" (login {user!r} from FLOWER_BASIC_AUTH)" if user else ""
    console.print(f"  flower:    http://127.0.0.1:{port}/{login}")


def main() -> None:
    logs.setup(logging.INFO)
    app()


if __name__ == "__main__":
    main()
