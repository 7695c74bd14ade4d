"""``thronos-analytics``: the one command line entry point."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

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

from thronos_analytics.core import logs
from thronos_analytics.core.settings import Settings, rejected_file, settings, use_settings
from thronos_analytics.core.store.status import RATE_SAMPLE_BATCHES, read_status

# No locals in --debug tracebacks: they would print REDIS_URL's password and whole batches.
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False
)
# One console, on stderr, shared with every rich display (the backfill's progress bar
# included): stdout carries only a command's own output, and two displays never fight.
rich.reconfigure(stderr=True)
console = rich.get_console()
log = logging.getLogger("thronos.cli")
DEMO_ROWS = 20_000

LedgerOpt = Annotated[
    list[Path] | None,
    typer.Option(
        help="ledger file; repeat for several (env THRONOS_LEDGER: paths separated by ':')",
        readable=False,  # checked by _check_ledgers, which says what to do
    ),
]


class _Options:
    debug = False  # --debug: an error shows its traceback instead of one line


def _fail(message: str, code: int = 2) -> typer.Exit:
    """An error as one line on stderr; exit code 2 (as click's own) for a usage error."""
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"thronos-analytics {version('thronos-analytics')}")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="THRONOS_DEBUG",
            help="on an error, show its traceback rather than one line",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    _Options.debug = debug


def _shown(url: str | None) -> str:
    """A URL fit to print: its password masked."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url)) if url else "(not set)"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _explain(exc: BaseException) -> str:
    """One line for an error: what went wrong and what to do about it."""
    import redis
    from kombu.exceptions import OperationalError

    config = settings()
    for cause in _causes(exc):
        if isinstance(cause, redis.AuthenticationError):
            return (
                f"Redis at {_shown(config.redis_url)} refused the login ({cause}):"
                " check the password in REDIS_URL"
            )
        if isinstance(cause, redis.exceptions.RedisClusterException) and not isinstance(
            cause.__cause__, (redis.ConnectionError, redis.TimeoutError)  # said below
        ):
            return (
                f"THRONOS_REDIS_CLUSTER=1, but Redis at {_shown(config.redis_url)} is not a"
                f" usable Redis Cluster ({cause}): point REDIS_URL at a node of one, or unset"
                " THRONOS_REDIS_CLUSTER for a single Redis"
            )
        if isinstance(cause, (redis.ConnectionError, redis.TimeoutError)):
            return (
                f"cannot reach Redis at {_shown(config.redis_url)} ({cause}): is it running?"
                " Set REDIS_URL to a running Redis, or start a stack with `thronos-analytics run`"
            )
        if isinstance(cause, OperationalError):
            return (
                f"cannot reach the broker at {_shown(config.broker_url)} ({cause}): is it"
                " running? Check CELERY_BROKER_URL (by default REDIS_URL)"
            )
        if isinstance(cause, PermissionError):
            return (
                f"{cause.filename or cause}: permission denied: give this user access, or point"
                " the command at a file it can read"
            )
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return f"{cause.strerror}: another program has the port; pass another --port"
        if isinstance(cause, OSError) and cause.filename:
            return f"{cause.filename}: {cause.strerror or cause}"
    if isinstance(exc, (RuntimeError, TimeoutError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (unexpected: --debug shows the traceback)"


def _use_stack() -> str:
    """The Redis this command talks to: REDIS_URL, else the stack running on the data dir,
    whose addresses then become this process's settings."""
    config = settings()
    if config.redis_url:
        return config.redis_url
    from thronos_analytics.stack import STATE_FILE, running_stack

    state = running_stack(config.data_dir)
    if state is None:
        path = config.data_dir / STATE_FILE
        why = f"{path} names a stack that has stopped" if path.exists() else f"no {path}"
        raise _fail(
            f"no stack is running on {config.data_dir} ({why}): start one with"
            " `thronos-analytics run`, or set REDIS_URL",
            code=1,
        )
    # stack.json leaves passwords out ("***"): those URLs must come from the environment.
    broker = os.environ.get("CELERY_BROKER_URL") or state.broker_url or state.redis_url
    for name, url in (("REDIS_URL", state.redis_url), ("CELERY_BROKER_URL", broker)):
        if "***" in urlsplit(url).netloc:
            raise _fail(
                f"the stack on {config.data_dir} uses {_shown(url)}, whose password"
                f" {config.data_dir / STATE_FILE} leaves out: set {name}",
                code=1,
            )
    use_settings(config.with_stack(state.redis_url, broker))
    return state.redis_url


def _check_cluster() -> None:
    """For a command that starts workers or uses the broker: refuse a Redis Cluster set up
    without a broker of its own, or without REDIS_URL (``stack.check_cluster``)."""
    from thronos_analytics.stack import check_cluster

    check_cluster(settings())


def _connect() -> Any:
    """A client of this command's Redis, checked: an unreachable one, or a state of another
    layout, fails here, at once."""
    from thronos_analytics.core import store

    r = store.connect(_use_stack())
    store.check_layout(r)
    return r


def _publish_quickly() -> None:
    """In a process that sends tasks, a broker or result store that is down fails the send
    in seconds, rather than after Celery's 20 reconnects (the caller retries, or says so)."""
    from thronos_analytics.workers.celery_app import app as celery_app

    conf = celery_app.conf
    conf.broker_transport_options = {**conf.broker_transport_options, "socket_connect_timeout": 2}
    conf.broker_connection_timeout = 2
    conf.result_backend_transport_options = {
        **(conf.result_backend_transport_options or {}),
        "retry_policy": {"max_retries": 0},
    }


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
        if path.exists() and not os.access(path, os.R_OK):
            raise _fail(f"ledger {path}{origin} is not readable by this user (permission denied)")
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
    from thronos_analytics.analytics.simulate import write

    lines = cfg.rows + int(round(cfg.bad_rate * cfg.rows))
    with _progress() as progress:
        task = progress.add_task(f"writing {out}", total=lines)
        return write(cfg, out, truth, progress=lambda n: progress.update(task, completed=n))


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _drain(config: Settings, ledgers: tuple[Path, ...], redis_url: str) -> dict:
    """``drain``, with bars for rows ingested and flagged when on a terminal."""
    from thronos_analytics.core import store
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
        bool, typer.Option("--flower", help="also start Flower (auth: FLOWER_BASIC_AUTH)")
    ] = False,
    flower_port: Annotated[int, typer.Option(help="Flower's port")] = 5555,
    flower_no_auth: Annotated[
        bool, typer.Option("--flower-no-auth", help="allow Flower without auth")
    ] = False,
    drain: Annotated[
        bool, typer.Option("--drain", help="process the ledgers, export, and exit")
    ] = False,
    demo: Annotated[
        bool,
        typer.Option(
            help="with no --ledger or THRONOS_LEDGER and an empty default ledger, also follow "
            "a demo file of simulated rows ($THRONOS_DATA_DIR/demo.ai_ledger.jsonl)"
        ),
    ] = True,
) -> None:
    """Start Redis (unless REDIS_URL is set), workers, beat and a tail producer per ledger."""
    from thronos_analytics.core import store
    from thronos_analytics.stack import Stack

    config = settings(ledger or ())
    _check_cluster()  # Stack.start checks too; here before a ping or the demo file
    if flower:
        _check_flower_auth("--flower-no-auth", flower_no_auth)
    _check_ledgers(config.ledgers, config.ledger_named, _origin(ledger, config), must_exist=False)
    if config.redis_url:
        store.connect(config.redis_url).ping()  # before starting workers that would wait for it
    ledgers = config.ledgers
    # A ledger the user named is their data: simulated rows never go into it.
    if demo and not config.ledger_named and _size(config.default_ledger) == 0:
        ledgers = (config.default_ledger, _demo_ledger(config))
    stack = Stack(
        config,
        workers=workers,
        # A drain retrains once scoring is done: the scoring workers' cores are free then.
        trainers=workers if drain else 1,
        beat=not drain,
        flower_port=flower_port if flower else None,
    )
    if drain:
        # Score while the rest comes in, with a model of the ledger's first rows.
        first = max(config.min_train_rows, config.first_model_rows)
        stack.env["THRONOS_MIN_TRAIN_ROWS"] = str(first)
    with stack:
        if flower:
            _print_flower(flower_port)
        if drain:
            with stack.supervised():  # a worker that dies fails the drain, not its timeout
                summary = _drain(config, ledgers, stack.redis_url)
            _print_json(summary)
            return
        _serve(config, ledgers, stack)


def _origin(ledger: list[Path] | None, config: Settings) -> str:
    if ledger:
        return "from --ledger"
    return "from THRONOS_LEDGER" if config.ledger_named else "the default ledger"


def _ledger_tail(config: Settings, ledger: Path, r: Any) -> Any:
    """The tail producer on one ledger: rows to scoring, bad lines to its dead letters."""
    from thronos_analytics.core.messages import send_batch
    from thronos_analytics.producers.dead_letter import DeadLetter
    from thronos_analytics.producers.tail import TailProducer

    dead_letter = DeadLetter(rejected_file(ledger), ledger.name, r)
    return TailProducer(ledger, send_batch, dead_letter.record, config.batch_size, confirm_with=r)


Tails = list[tuple[Any, threading.Thread]]


def _follow(config: Settings, ledgers: tuple[Path, ...], r: Any) -> Tails:
    """A tail producer thread per ledger, each with its own checkpoint beside its file."""
    tails = []
    for i, path in enumerate(ledgers, 1):
        tail = _ledger_tail(config, path, r)
        thread = threading.Thread(target=tail.run, name=f"tail{i}", daemon=True)
        tails.append((tail, thread))
    for _, thread in tails:
        thread.start()
    return tails


def _stop(tails: Tails) -> None:
    for tail, _ in tails:
        tail.stop.set()
    for _, thread in tails:
        thread.join(5)


# The run screen: redrawn this often on a terminal; off one, a line at most this often.
SCREEN_REFRESH_S = 1.0
PLAIN_LINE_EVERY_S = 30.0


def _serve(config: Settings, ledgers: tuple[Path, ...], stack: Any) -> None:
    import redis
    from rich.live import Live

    from thronos_analytics.core import store
    from thronos_analytics.workers.tasks import refresh_analytics

    r = store.connect(stack.redis_url)
    store.check_layout(r)
    tails = _follow(config, ledgers, r)
    started = time.monotonic()
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    if live is None:
        _print_where(config, stack, tails)
    refreshed = False
    last_line, last_line_at = "", -PLAIN_LINE_EVERY_S
    report: dict[str, Any] | None = None
    problem = ""
    try:
        with live or contextlib.nullcontext(), _logs_above(live):
            while True:
                stack.check()
                try:
                    report, problem = _status_report(r), ""
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    problem = f"cannot reach Redis at {_shown(stack.redis_url)}: {exc}"
                caught_up = all(t.position.offset >= _size(t.ledger) for t, _ in tails)
                if not refreshed and caught_up and not problem:
                    # Caught up with every ledger: train and export now, not at the next beat.
                    refresh_analytics.delay(force=True)
                    refreshed = True
                if live is not None:
                    screen = _run_screen(config, stack, tails, report, problem, started)
                    live.update(screen, refresh=True)
                elif report is not None or problem:
                    line = problem or _plain_line(report or {})
                    now = time.monotonic()
                    if line != last_line and now - last_line_at >= PLAIN_LINE_EVERY_S:
                        console.print(line, soft_wrap=True, highlight=False)
                        last_line, last_line_at = line, now
                time.sleep(SCREEN_REFRESH_S)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        _stop(tails)


@contextlib.contextmanager
def _logs_above(live: Any) -> Iterator[None]:
    """While the run screen is up, this process's log lines print above it, not through it."""
    from rich.logging import RichHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, RichHandler)]
    before = [h.console for h in handlers]
    if live is not None:
        for handler in handlers:
            handler.console = live.console
    try:
        yield
    finally:
        for handler, previous in zip(handlers, before, strict=True):
            handler.console = previous


def _print_where(config: Settings, stack: Any, tails: Tails) -> None:
    """Off a terminal: where everything is, once, as plain lines."""
    console.print(f"Thronos analytics (Redis {_shown(stack.redis_url)})", soft_wrap=True)
    for tail, _ in tails:
        console.print(f"  ledger:    {tail.ledger}", soft_wrap=True, highlight=False)
        console.print(f"  rejected:  {rejected_file(tail.ledger)}", soft_wrap=True)
    console.print(f"  analytics: {config.analytics_json}", soft_wrap=True, highlight=False)
    console.print(f"  logs:      {_log_files(stack.log_files)}", soft_wrap=True, highlight=False)
    for warning in stack.warnings:
        console.print(f"WARNING: {warning}", soft_wrap=True, highlight=False)
    console.print(
        f"  flags:     thronos-analytics flags --follow  (THRONOS_DATA_DIR={config.data_dir})",
        soft_wrap=True,
        highlight=False,
    )


def _plain_line(report: dict[str, Any]) -> str:
    """Off a terminal: the run screen's numbers as one line."""
    lag, rate = report["lag"], report["anomaly_rate"]["overall"]
    line = (
        f"seen {report['interactions_seen']:,}  scored {report['interactions_scored']:,}"
        f"  rejected {report['interactions_rejected']:,}  score events {report['score_events']:,}"
        f"  waiting for a model {report['pending']:,}"
        f"  {report['throughput']['rows_scored_last_minute']:,}/min"
        f"  lag p95 {_lag_text(lag, 95)}  anomaly rate {_pct(rate)}"
        f"  warnings {len(report['warnings'])}"
    )
    if report["state_warning"]:
        line += f"  STATE WARNING: {report['state_warning']}"
    return line


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def _run_screen(
    config: Settings,
    stack: Any,
    tails: Tails,
    report: dict[str, Any] | None,
    problem: str,
    started: float,
) -> Any:
    """The live panel of `run`: where things are, then how the pipeline is doing."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    private = " (private, data in " + str(config.data_dir / "redis") + ")" if stack.redis else ""
    grid.add_row("Redis", Text(_shown(stack.redis_url) + private))
    for tail, _ in tails:
        caught_up = tail.position.offset >= _size(tail.ledger)
        state = "[green]caught up[/]" if caught_up else "[yellow]reading[/]"
        if not tail.ledger.exists():
            state = "[dim]not there yet[/]"
        grid.add_row("ledger", f"{_escape(tail.ledger)}  {state}, {tail.sent:,} rows sent")
        grid.add_row("", f"[dim]rejected lines → {_escape(rejected_file(tail.ledger))}[/]")
    export = (report or {}).get("last_export") or {}
    when = f"  written {_age(report['last_export_age_s'])}" if report and export else ""
    grid.add_row(
        "export",
        f"{_escape(config.analytics_json)} (+ .html){when or '  [dim]after the first retrain[/]'}",
    )
    grid.add_row("logs", _escape(_log_files(stack.log_files)))
    grid.add_row("flags", "thronos-analytics flags --follow")
    grid.add_row("", "")
    for warning in stack.warnings:
        grid.add_row("[red]WARNING[/]", Text(warning, style="bold red"))
    if problem:
        grid.add_row("[red]Redis[/]", Text(problem, style="red"))
    if report is not None:
        _add_numbers(grid, report)
    uptime = _duration(time.monotonic() - started)
    return Panel(
        grid,
        title="[bold]Thronos analytics[/]",
        subtitle=f"up {uptime} · Ctrl-C stops everything",
        expand=False,
    )


def _log_files(files: dict[str, Path]) -> str:
    """``data/logs/{scoring1,training}.log · data/redis/redis.log``: each folder once."""
    by_folder: dict[Path, list[Path]] = {}
    for path in files.values():
        by_folder.setdefault(path.parent, []).append(path)
    shown = []
    for folder, paths in by_folder.items():
        if len(paths) == 1:
            shown.append(str(paths[0]))
            continue
        stems = ",".join(p.stem for p in paths)
        suffixes = {p.suffix for p in paths}
        suffix = suffixes.pop() if len(suffixes) == 1 else ""
        shown.append(f"{folder}/{{{stems}}}{suffix}")
    return " · ".join(shown)


def _escape(value: Any) -> str:
    from rich.markup import escape

    return escape(str(value))


def _memory_text(memory: dict[str, Any]) -> tuple[str, str]:
    """Redis's memory (of its limit, if one is set), and what that is per interaction."""
    used = f"{memory['used_bytes'] / 2**20:,.1f} MiB"
    if memory["max_bytes"]:
        used += f" of {memory['max_bytes'] / 2**20:,.0f} MiB"
    if memory["nodes"] > 1:
        used += f" on {memory['nodes']} nodes, {memory['shards']} shards"
        if memory["nodes_without_shard"]:
            used += f" ({memory['nodes_without_shard']} hold none: THRONOS_CLUSTER_SHARDS)"
    per_row = memory["bytes_per_interaction"]
    return used, (f"{per_row:,} B per interaction" if per_row is not None else "")


def _add_numbers(grid: Any, report: dict[str, Any]) -> None:
    from rich.text import Text

    lag, rate, throughput = report["lag"], report["anomaly_rate"], report["throughput"]
    rejected = report["interactions_rejected"]
    grid.add_row(
        "rows",
        f"seen {report['interactions_seen']:,} · scored {report['interactions_scored']:,}"
        f" · rejected {f'[yellow]{rejected:,}[/]' if rejected else '0'}"
        f" · waiting for a model {report['pending']:,}",
    )
    grid.add_row("redis memory", " · ".join(filter(None, _memory_text(report["redis_memory"]))))
    grid.add_row(
        "score events",
        f"{report['score_events']:,} ({report['score_events_joined']:,} joined,"
        f" {report['score_events_orphaned']:,} waiting for their interaction)",
    )
    approx = "≈" if throughput["estimated"] else ""
    grid.add_row(
        "throughput",
        f"{approx}{throughput['rows_scored_last_minute']:,} rows/min"
        f" · last flag {_age(throughput['last_flag_age_s'])}",
    )
    mean = f" · mean {_duration(lag['mean_s'])}" if lag["mean_s"] is not None else ""
    grid.add_row("lag p50 / p95", f"{_lag_text(lag, 50)} / {_lag_text(lag, 95)}{mean}")
    grid.add_row(
        "anomaly rate",
        f"{_pct(rate['overall'])} · last {RATE_SAMPLE_BATCHES} batches {_pct(rate['recent'])}",
    )
    ages = []
    for name, model in report["models"].items():
        age = _duration(model["age_s"]) if model["age_s"] is not None else "[yellow]none yet[/]"
        ages.append(f"{name} {age}")
        if model["last_failure"]:
            error = str(model["last_failure"].get("error", ""))[:80]
            grid.add_row("[red]retrain[/]", Text(f"{name} failed: {error}", style="red"))
    grid.add_row("model ages", " · ".join(ages))
    if not report["warnings"]:
        grid.add_row("quality", "[dim]no warnings[/]")
    for warning in report["warnings"][:3]:
        grid.add_row("quality", Text(warning, style="yellow"))
    if len(report["warnings"]) > 3:
        grid.add_row("", f"[yellow]… {len(report['warnings']) - 3} more[/]")
    if not report["incidents"]:
        grid.add_row("incidents", "[dim]none active[/]")
    for incident in report["incidents"][:3]:
        grid.add_row("incident", Text(incident, style="bold yellow"))
    if len(report["incidents"]) > 3:
        grid.add_row("", f"[yellow]… {len(report['incidents']) - 3} more active incidents[/]")
    if report["state_warning"]:
        grid.add_row("[red]STATE[/]", Text(report["state_warning"], style="bold red"))


def _demo_ledger(config: Settings) -> Path:
    """The demo file, written once: its own file, so no real ledger ever holds demo rows."""
    from thronos_analytics.analytics.simulate import SimConfig

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
    force: Annotated[bool, typer.Option("--force", help="overwrite a file that has lines")] = False,
) -> None:
    """Write a realistic synthetic ledger with planted personas, anomalies and a quality drop."""
    from thronos_analytics.analytics.simulate import SimConfig

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
            metavar="PATH",
            help="ledger files to replay (default: --ledger, else THRONOS_LEDGER)",
            readable=False,  # checked by _check_ledgers
        ),
    ] = None,
    ledger: LedgerOpt = None,
) -> None:
    """Replay whole ledger files into the pipeline, one after the other (idempotent: rows
    are keyed by id).

    Returns once Redis has seen every row, sending again any that were lost on the way."""
    from thronos_analytics.core.messages import send_batch
    from thronos_analytics.producers.backfill import backfill as replay_file
    from thronos_analytics.producers.dead_letter import DeadLetter

    named = [*(paths or ()), *(ledger or ())]
    config = settings(named)
    origin = "" if paths else _origin(ledger, config)
    _check_ledgers(config.ledgers, True, origin, must_exist=True)
    _check_cluster()
    r = _connect()
    _publish_quickly()
    checked = threading.Event()

    def send(entries: Any) -> None:
        send_batch(entries)
        # After a send that worked: a broker that is down is said by the send itself.
        if entries and not checked.is_set():
            checked.set()
            _warn_without_workers()

    replays: list[dict[str, Any]] = []
    for path in config.ledgers:
        dead_letter = DeadLetter(rejected_file(path), path.name, r)
        before = _known(r)
        replay = replay_file(path, send, dead_letter.record, confirm_with=r)
        after = _known(r)
        replays.append(
            {
                "ledger": str(path),
                "lines": replay.lines,
                "rows": replay.rows,
                # Rows Redis had not seen before: 0 for a file replayed again.
                "new_rows": after[0] - before[0],
                "rejected": replay.rejected,
                "events": replay.events,
                "new_events": after[1] - before[1],
            }
        )
    summed = ("lines", "rows", "new_rows", "rejected", "events", "new_events")
    totals = {k: sum(int(e[k]) for e in replays) for k in summed}
    _print_json({**totals, "batch_size": config.batch_size, "ledgers": replays})


def _warn_without_workers() -> None:
    """Rows wait in the queue until a worker takes them: say so, rather than wait mutely."""
    from thronos_analytics.workers.celery_app import app as celery_app

    try:
        answered = celery_app.control.ping(timeout=1.0, limit=1)
    except Exception:  # the sends that follow say what is wrong with the broker
        return
    if not answered:
        console.print(
            "[yellow]warning: no worker answered a ping: backfill returns once workers"
            " (`thronos-analytics run`, or `worker`) have taken every row[/]",
            soft_wrap=True,
        )


def _known(r: Any) -> tuple[int, int]:
    """Interactions and score events Redis has seen."""
    from thronos_analytics.core import store

    counts = store.counts(r)
    return counts["interactions_seen"], counts["score_events"]


TAIL_REPORT_EVERY_S = 10.0


@app.command()
def tail(ledger: LedgerOpt = None) -> None:
    """Follow ledgers that another program writes, each from its own durable checkpoint."""
    config = settings(ledger or ())
    _check_ledgers(config.ledgers, config.ledger_named, _origin(ledger, config), must_exist=False)
    _check_cluster()
    r = _connect()
    _publish_quickly()
    tails = _follow(config, config.ledgers, r)
    for producer, _ in tails:
        where = f"line {producer.position.line:,}" if producer.position.line else "the top"
        if not producer.ledger.exists():
            where = "the top once it appears"
        console.print(
            f"following {producer.ledger} from {where} (checkpoint {producer.checkpoint})",
            soft_wrap=True,
            highlight=False,
        )
    reported = (0, 0)
    try:
        while True:
            time.sleep(TAIL_REPORT_EVERY_S)
            sent = (sum(t.sent for t, _ in tails), sum(t.events for t, _ in tails))
            if sent != reported:
                each = ", ".join(f"{t.ledger.name} {t.sent:,}" for t, _ in tails)
                events = f" and {sent[1]:,} score events" if sent[1] else ""
                console.print(
                    f"sent {sent[0]:,} rows{events} ({each})", soft_wrap=True, highlight=False
                )
                reported = sent
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
    """Suggest providers for a use case, from the latest ai_analytics.json (no Redis needed)."""
    from thronos_analytics.analytics.recommend import explain_empty, known_wallet, rank

    path = settings().analytics_json
    try:
        document = orjson.loads(path.read_bytes())
        model = document["recommendations"]["model"]
    except FileNotFoundError:
        raise _fail(
            f"{path} does not exist yet: `thronos-analytics run` writes it after its first"
            " retrain; or set THRONOS_DATA_DIR to the folder that has it",
            code=1,
        ) from None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise _fail(f"{path} is not an analytics export (no recommendations.model)", 1) from None
    warnings = document.get("warnings") or []
    if wallet and not known_wallet(model, wallet):
        sys.stderr.write(
            f"note: wallet {wallet!r} is unknown to the recommender (no rows of it in the last"
            " training): the ranking shown is the global one\n"
        )
        wallet = None
    ranked = rank(model, use_case, wallet, max_latency_ms, max_credits, top, warnings=warnings)
    why = None if ranked else explain_empty(model, use_case, wallet, max_latency_ms, max_credits)
    if as_json:
        _print_json(ranked)
        if why:
            sys.stderr.write(f"note: {why['text']}\n")
        return
    if not ranked:
        raise _fail(why["text"] if why else f"no provider for use case {use_case!r}", code=1)
    for i, choice in enumerate(ranked, 1):
        mark = " (explore)" if choice["explore"] else " (warning)" if choice["warning"] else ""
        print(
            f"{i}. {choice['provider']:<10} p_best {choice['p_best']:.2f}{mark}  {choice['reason']}"
        )


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts")] = False,
) -> None:
    """One screen: throughput, lag, backlog, rejections, anomaly rate, models, last export."""
    report = _status_report(_connect())
    if as_json:
        _print_json(report)
        return
    _print_status(report)


def _status_report(r: Any) -> dict[str, Any]:
    from thronos_analytics.workers.registry import NAMES

    return read_status(r, settings(), NAMES)


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
    flow.add_row(
        "score events",
        f"{report['score_events']:,}",
        f"{report['score_events_joined']:,} joined, {report['score_events_orphaned']:,} orphaned",
    )
    flow.add_row("redis memory", *_memory_text(report["redis_memory"]))
    rejected_style = "yellow" if report["interactions_rejected"] else ""
    reason = (report["last_rejection"] or {}).get("reason", "")
    flow.add_row(
        "rejected",
        f"[{rejected_style}]{report['interactions_rejected']:,}[/]" if rejected_style else "0",
        f"last: {reason[:40]}" if reason else "",
    )

    top = ", ".join(f"{p} {n:,}" for p, n in list(rate["by_provider"].items())[:3])
    flow.add_row(
        "anomaly rate",
        _pct(rate["overall"]),
        f"last {RATE_SAMPLE_BATCHES} batches {_pct(rate['recent'])}",
    )
    flow.add_row("anomalies", f"{report['anomalies']:,}", top)

    backlog = grid()
    for queue, depth in report["queues"].items():
        backlog.add_row(f"queue {queue}", f"[yellow]{depth:,}[/]" if depth else "0", "messages")
    backlog.add_row("waiting for model", f"{report['pending']:,}", "rows")
    if stalls := sum(report["worker_stalls"].values()):
        backlog.add_row("consumer stalls", f"[yellow]{stalls:,}[/]", "worker exits, restarted")

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
        f"{_escape(export.get('path', '?'))}  ({_age(report['last_export_age_s'])}, "
        f"{float(export.get('duration_s', 0)):.2f} s)"
        if export
        else "[yellow]no export yet[/]"
    )
    footer = [f"[bold]last export[/]  {export_line}", *failures]
    if report["state_warning"]:
        footer.append(f"[bold red]state warning[/] [red]{_escape(report['state_warning'])}[/]")
    dropped = sorted(report["dropped_fields"].items(), key=lambda kv: -kv[1])
    if dropped:
        shown = ", ".join(f"{field} {n:,}" for field, n in dropped[:4])
        more = f" (+{len(dropped) - 4} more)" if len(dropped) > 4 else ""
        footer.append(f"[bold]dropped fields[/]  {shown}{more}  [dim]rows with it unreadable[/]")
    footer += [f"[yellow]warning[/] {w}" for w in report["warnings"][:3]]
    if len(report["warnings"]) > 3:
        footer.append(f"[yellow]… {len(report['warnings']) - 3} more warnings[/]")
    footer += [f"[bold yellow]incident[/] {_escape(m)}" for m in report["incidents"][:3]]
    if len(report["incidents"]) > 3:
        footer.append(f"[yellow]… {len(report['incidents']) - 3} more active incidents[/]")
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
    interaction: Annotated[
        str | None, typer.Option("--id", help="print only this interaction's flag")
    ] = None,
) -> None:
    """Print flags as JSON lines, the last few and then, with --follow, each new one."""
    from thronos_analytics.core import store

    r = _connect()
    if interaction is not None:
        flag = store.flag_of(r, interaction)
        if flag is None:
            seen = store.was_seen(r, interaction)
            why = "it was seen and waits for a model" if seen else "no row with that id was seen"
            raise _fail(f"no flag for {interaction} ({why})", code=1)
        _print_lines([flag])
        return
    recent, cursor = store.latest_flags(r, last)
    _print_lines(map(orjson.dumps, recent))
    while follow:
        flags, cursor = store.flags_after(r, cursor, block_ms=1000)
        _print_lines(map(orjson.dumps, flags))


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
    import redis

    from thronos_analytics.stack import worker_command

    _check_cluster()
    # A state of another layout is refused; a Redis or cluster not up yet, Celery waits for.
    with contextlib.suppress(redis.RedisError, redis.exceptions.RedisClusterException):
        _connect()
    command = worker_command(name, queues, concurrency, "INFO") + list(ctx.args)
    os.execv(command[0], command)


@app.command()
def beat() -> None:
    """Celery beat; only the holder of a Redis lock schedules, so a second beat idles."""
    from thronos_analytics.stack import celery_command

    _check_cluster()
    _use_stack()
    command = celery_command("beat", "-l", "INFO")
    os.execv(command[0], command)


@app.command()
def flower(
    port: Annotated[int, typer.Option()] = 5555,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="allow Flower without auth")] = False,
) -> None:
    """Flower, with basic auth from FLOWER_BASIC_AUTH (user:password)."""
    from thronos_analytics.stack import celery_command

    _check_flower_auth("--no-auth", no_auth)
    _check_cluster()
    _use_stack()
    _print_flower(port)
    command = celery_command("flower", f"--port={port}")
    os.execv(command[0], command)


@app.command()
def metrics(port: Annotated[int, typer.Option()] = 9108) -> None:
    """Serve Prometheus metrics on :PORT/metrics, read from Redis at each scrape."""
    from prometheus_client import REGISTRY, start_http_server

    from thronos_analytics.core.metrics import RedisCollector
    from thronos_analytics.workers.registry import NAMES

    REGISTRY.register(RedisCollector(_connect(), settings(), NAMES))
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
        raise _fail(
            f"Flower needs a login: set FLOWER_BASIC_AUTH=user:password, or pass {no_auth_flag}"
        )
    for login in logins.split(","):
        user, _, password = login.partition(":")
        if not user or not password:
            raise _fail(
                "FLOWER_BASIC_AUTH must be user:password (several separated by commas); "
                f"got an entry without {'a user' if not user else 'a password'}"
            )


def _print_flower(port: int) -> None:
    user = os.environ.get("FLOWER_BASIC_AUTH", "").partition(":")[0]
    login = f" (login {user!r} from FLOWER_BASIC_AUTH)" if user else ""
    console.print(f"  flower:    http://127.0.0.1:{port}/{login}")


def main() -> None:
    """The entry point: any error is one line on stderr and a non-zero exit; with --debug,
    an exception shows its traceback instead."""
    logs.setup(logging.INFO)
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # EOF at a prompt
        raise SystemExit(1) from None
    except SystemExit as exc:
        # A refusal raised as SystemExit("why") (settings, the stack): the same one line.
        if isinstance(exc.code, str) and not _Options.debug:
            raise SystemExit(_fail(exc.code, code=1).exit_code) from None
        raise
    except Exception as exc:
        if _is_click_error(exc):  # a bad option or argument: never worth a traceback
            raise SystemExit(_usage_error(exc)) from None
        if _Options.debug:
            raise
        try:
            message = _explain(exc)
        except Exception:  # explaining must never hide the error itself
            message = f"{type(exc).__name__}: {exc}"
        raise SystemExit(_fail(message, code=1).exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)


def _is_click_error(exc: Exception) -> bool:
    # By shape: typer raises click's exceptions, or (0.2x) those of the click it bundles.
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    )


def _usage_error(exc: Any) -> int:
    if type(exc).__name__ == "NoArgsIsHelpError":  # no command given: the help, as before
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
        return int(exc.exit_code)
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return _fail(f"{exc.format_message()}{where}", exc.exit_code).exit_code


if __name__ == "__main__":
    main()
