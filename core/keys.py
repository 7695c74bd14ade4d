"""The Redis key space. Every key the project reads or writes is named here and nowhere else.

The state is split in **shards**: one on a single Redis, ``THRONOS_CLUSTER_SHARDS`` on a
Redis Cluster. An interaction belongs to the shard of its id's 64-bit hash
(:func:`ident`), and so do its score events, which name it by id. A shard's keys carry one
hash tag, so each shard lives in one cluster slot and a batch is one Lua call per shard.
The control keys (models, locks, the export, warnings, rejected lines) share another slot.

Inside a shard, what grows with the ledger is kept per **day** of ledger time (the row's
``ts``), in ``BUCKETS`` small hashes or sets per day and shard, so Redis keeps them in
its compact encodings. A day's keys are dropped once the newest row is
``THRONOS_RETENTION_DAYS`` past it (store.apply_batch): ids, flags, joins and session
aggregates are exact inside that horizon, and memory stops growing with it.

Exactly-once rests on the per-day ``ix`` hashes: an interaction is *seen* once its id's
hash is a field there (aggregates counted, training window appended) and *scored* once
that field holds its flag. Both are written inside one Lua script per shard, after a
check of every field, so a redelivered batch changes nothing. A row older than the
horizon cannot be checked against its day any more: it is counted as *late*, once (its
hash stays in a ``late`` set), and nothing else.

Two different ids share a hash with probability about n²/2⁶⁵ for n ids in a day and
shard: 3·10⁻⁶ for ten million calls a day. The second would count as a redelivery of the
first.
"""

from __future__ import annotations

import hashlib
from functools import cache, lru_cache

from redis.crc import key_slot

P = "thronos:"
CONTROL = P + "{c}:"

# --- control keys: one slot -----------------------------------------------------------
# STRING, set once: names this Redis state, so a checkpoint can tell that it was lost
STATE_ID = CONTROL + "state_id"
LAYOUT = CONTROL + "layout"  # STRING: shards and buckets the state was written with
REJECTED_COUNT = CONTROL + "rejected:count"  # STRING: rejected lines, each counted once
REJECTED_STREAM = CONTROL + "rejected:stream"  # STREAM of rejections, capped
# HASH rejection key -> JSON, as releases before rejected_on() kept every rejection: still
# looked in and counted, never written
REJECTED_BEFORE_DAYS = CONTROL + "rejected"
LAG_HISTOGRAM = CONTROL + "stats:lag"  # HASH bucket bound -> count, and "sum"
WORKER_ROWS = CONTROL + "stats:worker_rows"  # HASH worker hostname -> rows handled
# HASH worker hostname -> times it exited because its consumer stalled (workers/watchdog.py)
WORKER_STALLS = CONTROL + "stats:worker_stalls"
WARNINGS = CONTROL + "warnings"  # HASH warning key -> JSON, so each is reported once
# HASH incident key -> JSON: the incidents of the current window, with first_reported_at
INCIDENTS = CONTROL + "incidents"
EXPORT = CONTROL + "export"  # HASH: last export's path, time and duration

# The flag stream keeps about this many flags per shard, in whole batches (at least two):
# a backfill's 5,000-row batches would otherwise keep a million flags (~150 MB) in 200.
FLAG_STREAM_FLAGS = 20_000
FLAG_STREAM_MIN_BATCHES = 2
ANOMALIES_MAXLEN = 10_000  # per shard
REJECTED_STREAM_MAXLEN = 10_000
# A message's receipt outlives the wait for it: past that its producer looks its rows up.
RECEIPT_TTL_S = 600

# Bumped when what a key holds changes shape: a process refuses a state of another layout.
# 2: one aggregate record per session (and day) and wallet, not one hash per measure.
LAYOUT_VERSION = 2

# --- shards ---------------------------------------------------------------------------
BUCKETS = 1024  # per day, over all shards: ~100 rows each at 100k rows a day
_SLOTS = 16384


@cache
def _tags(n: int) -> tuple[str, ...]:
    """A hash tag per shard whose slot lies in the shard's even share of the slots, so
    shards spread over nodes that split the slots evenly (as ``redis-cli --cluster
    create`` does)."""
    tags = []
    for shard in range(n):
        low, high = shard * _SLOTS // n, (shard + 1) * _SLOTS // n
        tags.append(
            next(
                f"s{shard}.{i}"
                for i in range(100_000)
                if low <= key_slot(f"s{shard}.{i}".encode()) < high
            )
        )
    return tuple(tags)


def shard_prefix(shard: int, n: int) -> str:
    """The start of every key of ``shard`` (of ``n``): ``thronos:{<tag>}:``."""
    return f"{P}{{{_tags(n)[shard]}}}:"


def ident(interaction_id: str, n: int) -> tuple[int, int, str]:
    """(shard, bucket within the shard, field) of an id: its 64-bit hash decides all three.
    The field is the hash as a decimal integer, which Redis stores as an integer."""
    h = int.from_bytes(hashlib.blake2b(interaction_id.encode(), digest_size=8).digest(), "little")
    per_shard = BUCKETS // n
    signed = h - (1 << 64) if h >= 1 << 63 else h
    return h % n, (h // n) % per_shard, str(signed)


@lru_cache(maxsize=1 << 16)  # a batch asks once per row
def wallet_ref(wallet: str) -> int:
    """A wallet as a session's aggregate record names it: a 52-bit hash, which Lua's numbers
    hold exactly and a record stores in 9 bytes (a 43-character wallet would take its
    bucket out of Redis's compact encoding). Readers map it back through the wallets'
    records; two of a million wallets share one with probability about 10⁻⁴."""
    digest = hashlib.blake2b(wallet.encode(), digest_size=8, person=b"wallet").digest()
    return int.from_bytes(digest, "little") >> 12


def day(ts: float) -> int:
    """The UTC day of a ledger timestamp: days since the epoch."""
    return int(ts // 86400)


# Keys of a shard, after its prefix. ``{day}`` and ``{bucket}`` are filled in by the store;
# the Lua scripts build the same names from these templates (store.batch injects them).
IX = "ix:{day}:{bucket}"  # HASH id hash -> flag record (store.records), "" until scored
# HASH id hash -> join record: rows without a score or use case of their own, which a
# later score event can still change (store.records.JoinRecord)
JOIN = "join:{day}:{bucket}"
# HASH interaction id hash -> its newest event, for interactions not seen yet; {day} is
# the shard's clock when the event came
ORPHANS = "orphans:{day}:{bucket}"
EVENTS = "events:{day}:{bucket}"  # SET of score event id hashes applied; {day}: the event's
REASONS = "reasons:{day}"  # HASH id hash -> JSON reasons, for anomalies only
# HASH session id -> its aggregate record (store.records), in the session id's bucket
SESSION_AGG = "agg:session:{day}:{bucket}"
# HASH hash of "wallet\tsession" -> 1: the sessions counted in the wallets' records, in
# the pair's shard and bucket
SESSION_SEEN = "agg:session_seen:{day}:{bucket}"
UNDATED = "undated"  # the {day} of score events without a ts: never dropped
LATE = "late:{bucket}"  # SET of id hashes of rows (and "e" + events) past the horizon
CLOCK = "clock"  # STRING: the newest day seen (no later than tomorrow by the wall clock)
DAYS = "days"  # SET of the days that hold state
WAITING = "waiting"  # HASH day -> its rows without a flag yet: the day stays until 0
STATS = "stats"  # HASH of counters: seen, scored, late, anomalies, orphans, ...
ORPHAN_VERSION = "orphans:version"  # STRING: bumped by every orphan write
ANOMALIES_BY_PROVIDER = "stats:anomalies_by_provider"  # HASH provider -> count
DROPPED_FIELDS = "stats:dropped"  # HASH ledger source (e.g. meta.rating) -> rows
WINDOW = "window:batches"  # STREAM, see store.window: entry ids count rows
FLAG_STREAM = "flags:batches"  # STREAM, one entry per scored batch: n and f (JSON flags)
ANOMALIES = "anomalies"  # STREAM of flagged rows with context, capped, for the export
PENDING = "pending"  # LIST of wire rows waiting for the first anomaly model
ANOMALY_MODEL = "model:anomaly"  # STRING: set once an anomaly model is published
# Each shard holds the part of a session's or wallet's aggregates its rows make, and
# readers add the shards up. A session's record leaves with its day; its wallet's stays.
WALLET_AGG = "agg:wallet"  # HASH wallet -> its aggregate record (store.records)


def scored_in_minute(minute: int) -> str:
    """STRING, per shard: rows scored in that minute since the epoch; expires."""
    return f"stats:scored:{minute}"


# --- control keys with a name ---------------------------------------------------------
def model_current(name: str) -> str:
    return f"{CONTROL}model:{name}:current"  # STRING: the published version


def model_blob(name: str, version: str) -> str:
    return f"{CONTROL}model:{name}:{version}"  # STRING: the artifact bytes (npz or JSON)


def model_versions(name: str) -> str:
    return f"{CONTROL}model:{name}:versions"  # HASH version -> JSON {trained_at, ...}


def model_failure(name: str) -> str:
    return f"{CONTROL}model:{name}:failure"  # STRING JSON: the last failed retrain, if any


def lock(name: str) -> str:
    return f"{CONTROL}lock:{name}"


def receipt(message: str) -> str:
    """STRING: a worker applied that scoring message whole (store.received); expires."""
    return f"{CONTROL}receipt:{message}"


def rejected_on(day: int) -> str:
    """HASH rejection key -> JSON: the lines first rejected on that day (wall clock); it
    expires once the retention horizon has passed it."""
    return f"{CONTROL}rejected:{day}"
