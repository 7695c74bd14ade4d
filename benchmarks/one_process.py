"""The spec's analytics as one plain pandas + scikit-learn script, in one process.

    python -m benchmarks.one_process LEDGER [--out ai_analytics.json]

This is the peer ``thronos-analytics run --drain`` is timed against (``benchmarks.drains``):
what a competent data scientist would write from ``ai-ledger-sklearn-spec.md``, with no
Redis and no Celery:

1. read the JSONL ledger with orjson into a DataFrame, in the two layouts the design card
   names (the spec's ``ts``/``meta``/``score``, and ``timestamp``/``metadata``/``rating``
   with ``latency_ms`` or ``duration`` at the top level), skipping lines that do not parse
   or have no provider or time;
2. the spec's anomaly features (output length, score, latency, provider one-hot), an
   ``IsolationForest`` fitted on them, every row scored, the lowest 1% flagged;
3. per-session and per-wallet aggregates (calls, mean score, credits, provider mix), each
   scaled and clustered into 4 personas with ``KMeans``, as ``benchmarks.quality``'s plain
   model does;
4. per use case, providers ranked by mean score (too few calls: marked explore), and per
   wallet a suggestion where another provider scores better for it than its usual one;
5. a quality-drop check per (provider, use case): the last calls' mean score against the
   earlier calls';
6. one JSON export with the flagged rows, personas, rankings, suggestions and warnings.

The spec's step 3 names a classifier with the provider as target; that learns which
provider is *used*, not which scores best, so the ranking here is by mean score instead.
It prints the phase timings as JSON; ``run()`` returns them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

PERSONAS = 4
# 'auto' flags a quarter of a simulated ledger; the planted anomalies are 1% of its rows.
FLAGGED_SHARE = 0.01
MIN_CALLS = 30  # fewer calls than this in a (use case, provider) cell: explore, not ranked
SUGGEST_MIN_CALLS = 5  # calls a wallet needs with a provider before it is compared
RECENT_CALLS = 500  # the quality check compares a cell's last calls ...
MIN_BEFORE = 200  # ... with at least this many earlier ones
DROP = 0.10  # a mean score this much lower, and ...
DROP_Z = 4.0  # ... this many standard errors, is a warning


def read_ledger(path: Path) -> pd.DataFrame:
    """One row per interaction, in the spec's columns, whichever layout each line uses."""
    records = []
    with open(path, "rb") as f:
        for line in f:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    raw = pd.DataFrame.from_records(records)

    def column(*names: str) -> pd.Series:
        out = pd.Series(np.nan, index=raw.index, dtype=object)
        for name in names:
            if name in raw:
                out = out.where(out.notna(), raw[name])
        return out

    nested = pd.DataFrame.from_records(
        [m if isinstance(m, dict) else {} for m in column("meta", "metadata")], index=raw.index
    )

    def inner(name: str) -> pd.Series:
        return pd.to_numeric(nested[name], errors="coerce") if name in nested else column()

    # `ts` is an ISO string, epoch seconds or epoch milliseconds; `timestamp` epoch seconds.
    ts = column("ts")
    number = pd.to_numeric(ts, errors="coerce")
    seconds = number.where(number < 1e11, number / 1000)
    text = ts.where(number.isna() & ts.map(lambda v: isinstance(v, str)))
    iso = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    seconds = seconds.fillna((iso - pd.Timestamp(0, tz="UTC")).dt.total_seconds())
    seconds = seconds.fillna(pd.to_numeric(column("timestamp"), errors="coerce"))

    # A rating is 1..5 stars, or already 0..1.
    rating = pd.to_numeric(nested.get("rating", column()), errors="coerce")
    rating = rating.where(rating <= 1, (rating - 1) / 4)
    score = pd.to_numeric(column("score"), errors="coerce").fillna(rating)
    duration_ms = pd.to_numeric(column("duration"), errors="coerce") * 1000
    latency = inner("latency_ms").fillna(pd.to_numeric(column("latency_ms"), errors="coerce"))
    frame = pd.DataFrame(
        {
            "id": column("id", "interaction_id"),
            "ts": seconds,
            "provider": column("provider"),
            "model": column("model", "model_id"),
            "session_id": column("session_id"),
            "wallet": column("wallet"),
            "use_case": nested.get("use_case", column()),
            "credits_used": pd.to_numeric(column("credits_used"), errors="coerce"),
            "score": score.where(score.between(0, 1)),
            "latency_ms": latency.fillna(duration_ms),
            "output_len": inner("output_chars"),
        }
    )
    readable = frame["provider"].map(lambda p: isinstance(p, str) and p != "")
    return frame[readable & frame["ts"].notna()].sort_values("ts", kind="stable")


def anomaly_scores(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The spec's features, an IsolationForest on them, every row's score and flag."""
    measures = frame[["output_len", "score", "latency_ms"]]
    X = pd.concat(
        [measures.fillna(measures.median()), pd.get_dummies(frame["provider"], dtype=float)],
        axis=1,
    ).to_numpy(dtype=float)
    # A fixed contamination would score every row twice (once in fit): take the quantile.
    score = IsolationForest(random_state=0).fit(X).score_samples(X)
    return -score, score < np.quantile(score, FLAGGED_SHARE)


def aggregates(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The spec's session features, for any key: calls, mean score, credits, provider mix."""
    grouped = frame.groupby(key)
    out = pd.DataFrame(
        {
            "total_calls": grouped.size(),
            "avg_score": grouped["score"].mean(),
            "total_credits": grouped["credits_used"].sum(),
        }
    )
    mix = pd.crosstab(frame[key], frame["provider"], normalize="index").add_prefix("mix_")
    return out.join(mix).fillna({"avg_score": out["avg_score"].mean()})


def personas(table: pd.DataFrame) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """KMeans on the scaled aggregates; each cluster named by its centroid."""
    X = StandardScaler().fit_transform(table.to_numpy(dtype=float))
    labels = KMeans(n_clusters=PERSONAS, n_init=10, random_state=0).fit_predict(X)
    centroids = table.groupby(labels).mean()
    mix = centroids.filter(like="mix_")
    clusters = [
        {
            "cluster": int(c),
            "label": f"{mix.loc[c].idxmax().removeprefix('mix_')} · "
            f"{centroids.loc[c, 'total_calls']:.0f} calls",
            "size": int((labels == c).sum()),
            "centroid": {k: round(float(v), 4) for k, v in centroids.loc[c].items()},
        }
        for c in centroids.index
    ]
    return labels, clusters


def rankings(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Providers per use case, best mean score first; cells with few calls are explore."""
    cells = (
        frame.dropna(subset=["use_case", "score"])
        .groupby(["use_case", "provider"])
        .agg(
            mean_score=("score", "mean"),
            calls=("score", "size"),
            p90_latency_ms=("latency_ms", lambda s: s.quantile(0.9)),
            mean_credits=("credits_used", "mean"),
        )
        .reset_index()
    )
    cells["explore"] = cells["calls"] < MIN_CALLS
    cells = cells.sort_values(["use_case", "explore", "mean_score"], ascending=[True, True, False])
    return {
        str(use_case): part.drop(columns="use_case").round(4).to_dict("records")
        for use_case, part in cells.groupby("use_case")
    }


def suggestions(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per wallet and use case: the provider with its best mean score, where that is not
    the one it calls most."""
    cells = (
        frame.dropna(subset=["wallet", "use_case", "score"])
        .groupby(["wallet", "use_case", "provider"])["score"]
        .agg(["mean", "size"])
        .reset_index()
    )
    usual = cells.sort_values("size").drop_duplicates(["wallet", "use_case"], keep="last")
    known = cells[cells["size"] >= SUGGEST_MIN_CALLS]
    best = known.sort_values("mean").drop_duplicates(["wallet", "use_case"], keep="last")
    both = best.merge(usual, on=["wallet", "use_case"], suffixes=("", "_usual"))
    better = both[
        (both["provider"] != both["provider_usual"]) & (both["mean"] > both["mean_usual"])
    ]
    texts = (
        "For " + better["use_case"] + " tasks, " + better["provider"] + " currently has a higher"
        " score for you ("
        + better["mean"].round(2).astype(str)
        + " vs "
        + better["mean_usual"].round(2).astype(str)
        + ")"
    )
    return texts.groupby(better["wallet"]).agg(list).to_dict()


def quality_warnings(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Cells whose last RECENT_CALLS scored clearly worse than the calls before them."""
    scored = frame.dropna(subset=["use_case", "score"])
    keys = ["provider", "use_case"]
    grouped = scored.groupby(keys)
    from_end = grouped.cumcount(ascending=False)
    part = np.where(from_end < RECENT_CALLS, "recent", "before")
    stats = scored.groupby([*(scored[k] for k in keys), part])["score"].agg(["mean", "var", "size"])
    wide = stats.unstack()
    warnings = []
    for (provider, use_case), cell in wide.iterrows():
        if not cell[("size", "before")] >= MIN_BEFORE:  # NaN: no earlier calls
            continue
        drop = cell[("mean", "before")] - cell[("mean", "recent")]
        se = np.sqrt(
            cell[("var", "before")] / cell[("size", "before")]
            + cell[("var", "recent")] / cell[("size", "recent")]
        )
        if drop >= DROP and drop / se >= DROP_Z:
            warnings.append(
                {
                    "provider": provider,
                    "use_case": use_case,
                    "before": round(float(cell[("mean", "before")]), 4),
                    "now": round(float(cell[("mean", "recent")]), 4),
                    "drop": round(float(drop), 4),
                    "z": round(float(drop / se), 1),
                }
            )
    return warnings


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[phase] = round(time.perf_counter() - started, 3)


def run(ledger: Path, out: Path) -> dict[str, Any]:
    """The whole script on ``ledger``, the export written to ``out``; timings and counts."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with timed(timings, "read"):
        frame = read_ledger(ledger)
    with timed(timings, "anomalies"):
        anomaly_score, flagged = anomaly_scores(frame)
    with timed(timings, "personas"):
        sessions = aggregates(frame.dropna(subset=["session_id"]), "session_id")
        session_labels, session_clusters = personas(sessions)
        wallets = aggregates(frame.dropna(subset=["wallet"]), "wallet")
        wallet_labels, wallet_clusters = personas(wallets)
    with timed(timings, "recommendations"):
        ranked = rankings(frame)
        suggested = suggestions(frame)
    with timed(timings, "quality"):
        warnings = quality_warnings(frame)
    with timed(timings, "export"):
        anomalies = frame.loc[flagged, ["id", "ts", "wallet", "session_id", "provider", "model"]]
        anomalies = anomalies.assign(anomaly_score=anomaly_score[flagged].round(4))
        export = {
            "generated_at": time.time(),
            "stats": {"interactions": len(frame), "anomalies": int(flagged.sum())},
            "anomalies": anomalies.to_dict("records"),
            "profiles": {
                "sessions": dict(zip(sessions.index, session_labels.tolist(), strict=True)),
                "wallets": dict(zip(wallets.index, wallet_labels.tolist(), strict=True)),
                "clusters": {"sessions": session_clusters, "wallets": wallet_clusters},
            },
            "recommendations": ranked,
            "suggestions": suggested,
            "warnings": warnings,
        }
        out.write_bytes(orjson.dumps(export, option=orjson.OPT_SERIALIZE_NUMPY))
    return {
        "rows": len(frame),
        "anomalies": int(flagged.sum()),
        "sessions": len(sessions),
        "wallets": len(wallets),
        "warnings": len(warnings),
        "export_bytes": out.stat().st_size,
        "timings_s": {**timings, "total": round(time.perf_counter() - started, 3)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.one_process", description=__doc__)
    parser.add_argument("ledger", type=Path)
    parser.add_argument("--out", type=Path, default=Path("ai_analytics.json"))
    args = parser.parse_args(argv)
    print(orjson.dumps(run(args.ledger, args.out), option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
