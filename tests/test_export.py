"""An export never silently replaces one that accounted for more interactions."""

from __future__ import annotations

import orjson

from thronos_analytics.core import keys
from thronos_analytics.workers import export


def test_an_export_of_fewer_rows_keeps_the_old_one_and_says_so(r, env, tmp_path):
    path = tmp_path / "ai_analytics.json"
    first = export.write_analytics(r, path)  # an empty state: nothing to compare with yet
    assert "state_warning" not in first and first["interactions_scored"] == 0
    richer = {**orjson.loads(path.read_bytes())}
    richer["stats"] = {**richer["stats"], "interactions_scored": 5000}
    path.write_bytes(orjson.dumps(richer))

    summary = export.write_analytics(r, path)  # as after a Redis that came back empty
    written = orjson.loads(path.read_bytes())
    assert "fewer than the 5,000" in written["state_warning"] == summary["state_warning"]
    assert r.hget(keys.EXPORT, "state_warning").decode() == written["state_warning"]
    kept = tmp_path / "ai_analytics.previous.json"
    assert orjson.loads(kept.read_bytes())["stats"]["interactions_scored"] == 5000
    # Still fewer than the kept one: still said, and the kept one stays.
    assert "fewer than the 5,000" in export.write_analytics(r, path)["state_warning"]
    assert orjson.loads(kept.read_bytes())["stats"]["interactions_scored"] == 5000

    # Once an export accounts for as many again, the warning is gone.
    richer["stats"] = {**richer["stats"], "interactions_scored": 0}
    kept.write_bytes(orjson.dumps(richer))
    assert "state_warning" not in export.write_analytics(r, path)
    assert "state_warning" not in orjson.loads(path.read_bytes())
    assert r.hget(keys.EXPORT, "state_warning") is None


def test_the_count_of_the_file_the_last_export_wrote_is_read_from_its_summary(r, env, tmp_path):
    # Parsing an export of tens of MB to read one number cost most of a second.
    path = tmp_path / "ai_analytics.json"
    export.write_analytics(r, path)
    r.hset(keys.EXPORT, "interactions_scored", 5000)  # what the summary says the file holds
    assert "fewer than the 5,000" in export.write_analytics(r, path)["state_warning"]
    # A file someone else wrote since is read, whatever the summary says.
    path.write_bytes(orjson.dumps({"stats": {"interactions_scored": 0}}))
    r.hset(keys.EXPORT, "interactions_scored", 5000)
    assert "state_warning" not in export.write_analytics(r, path)
