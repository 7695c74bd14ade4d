"""The Redis key space. Every key the project reads or writes is named here and nowhere else.

Exactly-once bookkeeping rests on two sets: an interaction is *seen* once its id is in
``SEEN`` (aggregates counted, training window appended) and *scored* once its flag is in
``FLAGS``. Both are written with set-if-absent inside one Lua script, so a redelivered
batch changes nothing.
"""

from __future__ import annotations

from thronos_analytics.core import aggregates

P = "thronos:"

SEEN = P + "seen"  # SET of interaction ids ingested
# STRING, set once: names this Redis state, so a checkpoint can tell that it was lost
STATE_ID = P + "state_id"
FLAGS = P + "flags"  # HASH id -> flag JSON (readable by id)
# STREAM, one entry per scored batch: n (flags) and f (JSON array of them); capped in entries.
FLAG_STREAM = P + "flags:batches"
ANOMALIES = P + "anomalies"  # STREAM of flagged rows with context, capped, for the export
# STREAM, one entry per batch of new rows: r (JSON array of wire rows). An entry's id is
# "<rows ever added, up to its last>-0", so the newest N rows are found by id alone.
WINDOW = P + "window:batches"
PENDING = P + "pending"  # LIST of wire rows waiting for the first anomaly model
REJECTED = P + "rejected"  # HASH rejection key -> JSON (count = HLEN, idempotent)
REJECTED_STREAM = P + "rejected:stream"  # STREAM of rejections, capped
STATS = P + "stats"  # HASH of counters: anomalies, ...
ANOMALIES_BY_PROVIDER = P + "stats:anomalies_by_provider"  # HASH provider -> count
LAG_HISTOGRAM = P + "stats:lag"  # HASH bucket bound -> count, and "sum"
WORKER_ROWS = P + "stats:worker_rows"  # HASH worker hostname -> rows handled (deliveries)
WARNINGS = P + "warnings"  # HASH warning key -> JSON, so each is reported once
# HASH incident key -> JSON: the incidents of the current window, with first_reported_at
INCIDENTS = P + "incidents"
# Score events, joined to interactions by id whichever arrives first (see store.apply_scores).
SCORE_EVENTS = P + "join:events"  # SET of score event ids applied
SCORES = P + "join:scores"  # HASH interaction id -> its newest event, JSON [ts, id, score, uc]
# HASH interaction id -> JSON [session, wallet, own score, own use case], for interactions
# seen without a score or a use case: what a later event needs to correct the aggregates.
JOIN_ROWS = P + "join:rows"
# HASH ledger source (e.g. meta.rating) -> rows in which it was unreadable, and dropped
DROPPED_FIELDS = P + "stats:dropped"
EXPORT = P + "export"  # HASH: last export's path, time and duration
AUTOTRAIN_LOCK = P + "lock:autotrain"

FLAG_STREAM_MAXLEN = 200  # entries (batches): a few MB in live use, ~70 MB in a backfill
ANOMALIES_MAXLEN = 10_000
REJECTED_STREAM_MAXLEN = 10_000

# Per-session and per-wallet aggregates live in one hash per measure, keyed by the
# session id or wallet, so training reads each measure with a single HGETALL. The measures
# are defined in core/aggregates.py; pair measures are keyed "<id>\t<provider or use case>".
AGG_MEASURES = aggregates.NAMES
PAIR_MEASURES = aggregates.PAIRS
AGG_SCOPES = tuple(scope for scope, _ in aggregates.SCOPES)
SESSION_WALLET = P + "agg:session:wallet"  # HASH session -> wallet
WALLET_SESSIONS = P + "agg:wallet:sessions"  # HASH wallet -> number of sessions
WALLET_SESSION_SEEN = P + "agg:wallet:session_seen"  # HASH "wallet\tsession" -> 1

def agg(scope: str, measure: str) -> str:
    """``mix`` and ``uc`` are keyed by ``"<id>\\t<provider or use case>"``; the rest by id."""
    assert scope in AGG_SCOPES and measure in AGG_MEASURES, (scope, measure)
    return f"{P}agg:{scope}:{measure}"


def model_current(name: str) -> str:
    return f"{P}model:{name}:current"  # STRING: the published version


def model_blob(name: str, version: str) -> str:
    return f"{P}model:{name}:{version}"  # STRING: the artifact bytes (npz or JSON)


def model_versions(name: str) -> str:
    return f"{P}model:{name}:versions"  # HASH version -> JSON {trained_at, n_samples, ...}


def model_failure(name: str) -> str:
    return f"{P}model:{name}:failure"  # STRING JSON: the last failed retrain, if any


def scored_in_minute(minute: int) -> str:
    """STRING: rows scored in that minute since the epoch; expires after a few minutes."""
    return f"{P}stats:scored:{minute}"


def lock(name: str) -> str:
    return f"{P}lock:{name}"
