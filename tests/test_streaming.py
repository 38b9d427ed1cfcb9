"""The streaming job against the real things: Spark local[2] (transformWithStateInPandas, RocksDB state, checkpoints),
a real Valkey server, Feast's own online read. A small simulated day is replayed (a few hours of it, a couple of
thousand lines with the simulator's late, duplicate and malformed records) into a Redis Stream per test."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from propensity.batch import BatchConfig, fold_sessions
from propensity.config import Settings
from propensity.feast_repo import VIEWS, apply, decode_value, feature_store, field_name, redis_key
from propensity.features import features_of
from propensity.livestream import dead_letter_key, publish
from propensity.streaming import (StreamConfig, StreamPaths, committed_offset, part_id,
                                  decode_bucket, landing_lines, read_metrics, replay, run_stream, status)

HOURS = 4          # replayed slice of the simulated day (event time)
FEATS = features_of("session", "state")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    "One simulated day (small profile, 1% malformed records); tests replay its first HOURS of landing-zone lines."
    from dataclasses import replace as _replace
    from propensity.simulate import PROFILES, simulate
    out = tmp_path_factory.mktemp("stream_world") / "w"
    simulate(_replace(PROFILES["small"], malformed_share=0.01), 1, 11, out, progress=False)
    return out


def settings_for(redis_url, data_dir, name):
    "Settings of one run: its own stream key and Feast project (so runs never share keys)."
    return Settings.from_env({"REDIS_URL": redis_url, "PROPENSITY_DATA": str(data_dir),
                              "PROPENSITY_STREAM": f"test:{name}", "PROPENSITY_FEAST_PROJECT": f"t_{name}",
                              "SPARK_MASTER": "local[2]"})


def replayed(world):
    "The lines the replay of the slice publishes, in order."
    return [line for _, line in landing_lines(world, hours=HOURS)]


def batch_fold(world, lines):
    "The batch job's fold (`fold_sessions`) over the canonical events among `lines`: session id -> features."
    ids = set()
    for l in lines:
        try: ids.add(orjson.loads(l)["event_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError): pass
    ev = pd.read_parquet(world / "tables" / "events")
    ev = ev[ev.event_id.isin(ids)].sort_values(["session_id", "event_time", "event_id"]).reset_index(drop=True)
    rows = fold_sessions(ev, BatchConfig())
    return {r["session_id"]: r for r in rows if r["kind"] == "session"}


def online(settings, data_dir, sessions):
    "Session features read back through Feast's own FeatureStore.get_online_features."
    store = feature_store(settings, data_dir)
    apply(store, data_dir)
    got = store.get_online_features(features=[f"{VIEWS['session']}:{f.name}" for f in FEATS],
                                    entity_rows=[{"session_id": s} for s in sessions]).to_dict()
    return {s: {f.name: got[f.name][i] for f in FEATS} for i, s in enumerate(sessions)}


def malformed_ids(world):
    "Event ids of the simulator's malformed records (truth/delivery)."
    t = pd.read_parquet(world / "truth" / "delivery")
    return set(t[t.kind == "malformed"].event_id)


def same(a, b):
    "Feature dicts equal (floats within 1e-9 relative)."
    for f in FEATS:
        x, y = a[f.name], b[f.name]
        if f.dtype == "float64": assert x == pytest.approx(y, rel=1e-9, abs=1e-9), (f.name, x, y)
        else: assert x == y, (f.name, x, y)


def test_stream_equals_batch_and_dead_letters_bad_input(world, tmp_path, redis_url, redis_client, spark):
    "Skew + bad input: every session's online features (via Feast) equal the batch fold; malformed -> dead letters."
    s = settings_for(redis_url, tmp_path, "skew")
    lines = replayed(world)
    rep = replay(redis_client, world, s.stream_key, None, hours=HOURS, progress=False)
    assert rep["lines"] == len(lines) > 1000
    out = run_stream(tmp_path, s, StreamConfig(lateness_minutes=600), until_idle=True, spark=spark, progress=False)
    assert out["stopped_by"] == "idle"
    assert out["input_rows"] == len(lines) and out["late_dropped"] == 0  # 10 h lateness: nothing is late in 6 h

    expected = batch_fold(world, lines)
    got = online(s, tmp_path, sorted(expected))
    assert len(expected) > 50
    for sid, exp in expected.items():
        same(got[sid], {f.name: exp[f.name] for f in FEATS})

    # bad input: exactly the simulator's malformed records of the slice are dead-lettered, with reasons
    bad = malformed_ids(world)
    injected = [l for l in lines if any(m.encode() in l for m in bad)]
    assert injected, "the slice should hold malformed records"
    dead = redis_client.xrange(dead_letter_key(s.stream_key))
    assert len(dead) == len(injected) == out["rejected"]
    assert sorted(d[b"e"] for _, d in dead) == sorted(injected)
    for _, d in dead:
        reason = d[b"reason"].decode()
        assert reason.split("=")[0].split(":")[0] in {"record", "session_id", "event_type", "event_time", "price", "country"}, reason
        assert d[b"source"].startswith(s.stream_key.encode() + b":")
    # the query kept running: batches after the first reject still updated sessions, and it stopped only when idle
    metrics = read_metrics(StreamPaths.of(tmp_path).metrics)
    assert sum(m["rejected"] or 0 for m in metrics) == len(injected)
    first_bad = min(m["batch_id"] for m in metrics if m["rejected"])
    assert sum(m.get("sessions_updated", 0) for m in metrics if m["batch_id"] >= first_bad) > 0
    # the duplicates the replay injected are dropped (by the dedup step or by the fold) and counted
    dups = len(lines) - len(injected) - len({orjson.loads(l)["event_id"] for l in lines if l not in injected})
    assert dups > 0 and out["duplicates_dropped"] == dups
    assert sum(m.get("fold_duplicates", 0) for m in metrics) < dups  # lateness 10 h: the dedup step ran, and dropped some


def test_online_write_never_goes_back_in_time(redis_client):
    "The sink's Lua script: replaying a batch changes nothing; an older event time never overwrites a newer one."
    from propensity.streaming import write_online
    base = {"session_id": "s-lua", **{f.name: f.default for f in FEATS}}
    new = base | {"event_timestamp": 1_709_600_000_000, "sess_events": 5, "sess_searches": 2}
    old = base | {"event_timestamp": 1_709_500_000_000, "sess_events": 9, "sess_searches": 7}
    late = new | {"sess_events": 6, "sess_searches": 3}  # a late event: same latest time, one more event folded
    key = redis_key("session", "s-lua", "p")
    fld = field_name(VIEWS["session"], "sess_searches")
    assert write_online(redis_client, [new], "p") == (1, 0)
    snap = redis_client.hgetall(key)
    assert write_online(redis_client, [new], "p") == (1, 0) and redis_client.hgetall(key) == snap  # replay: no change
    assert write_online(redis_client, [old], "p") == (0, 1)
    assert decode_value(redis_client.hget(key, fld), "int64") == 2
    assert write_online(redis_client, [late], "p") == (1, 0)
    assert decode_value(redis_client.hget(key, fld), "int64") == 3
    assert write_online(redis_client, [new], "p") == (0, 1)  # fewer events at the same time: older state


def online_raw(client, project, sessions):
    "Decoded session features straight from the hashes (for comparing two runs)."
    out = {}
    for sid in sessions:
        h = client.hgetall(redis_key("session", sid, project))
        out[sid] = {f.name: decode_value(h.get(field_name(VIEWS["session"], f.name)), f.dtype) for f in FEATS}
    return out


def offline_rows(data_dir):
    t = pq.read_table(StreamPaths.of(data_dir).offline).to_pandas()   # the batch id from the batch_id=N folders
    return t.assign(batch_id=t["batch_id"].astype("int64"))


def test_duplicates_without_the_dedup_step(tmp_path, redis_url, redis_client, spark):
    """With lateness <= the inactivity timeout the query has no dedup step (StreamConfig.dedup_step): a duplicate of the
    current part is skipped by the fold, one of an ended part is behind the watermark and dropped by the stateful
    operator. Both are counted. One entry per micro-batch, so the watermark moves between them."""
    s = settings_for(redis_url, tmp_path, "nodedup")
    t0, m = 1_709_510_400_000, 60_000
    base = dict(user_id=None, anonymous_id="a1", product_id="p000001", category="apparel.jeans", brand="b", price=10.0,
                quantity=None, search_query=None, device="desktop", country="IT", traffic_source="direct", referrer=None, page="/p")
    def ev(eid, sid, t): return orjson.dumps(dict(base, event_id=eid, event_type="product_view", event_time=t, session_id=sid))
    e1, e2, e4 = ev("e1", "s-dup", t0), ev("e2", "s-dup", t0 + 1 * m), ev("e4", "s-dup", t0 + 45 * m)
    entries = [e1, e2, e2,                     # a duplicate of the open part: the fold skips it
               ev("c1", "s-clock", t0 + 40 * m),  # watermark -> t0 + 30 min (lateness 10)
               e4,                              # 44 min after e2: s-dup's part 0 ends (split), part 1 = [e4]; watermark t0 + 35 min
               e1,                              # a duplicate of the ended part, behind the watermark: dropped as late
               e4,                              # a duplicate of the open part 1: skipped by the fold
               ev("c2", "s-clock", t0 + 50 * m)]
    publish(redis_client, entries, s.stream_key)
    cfg = StreamConfig(lateness_minutes=10, max_rows_per_batch=1)
    assert not cfg.dedup_step
    out = run_stream(tmp_path, s, cfg, until_idle=True, spark=spark, progress=False)
    assert out["input_rows"] == len(entries)
    assert (out["late_dropped"], out["duplicates_dropped"]) == (1, 2)
    got = online(s, tmp_path, ["s-dup", "s-dup~1"])
    assert got["s-dup"]["sess_events"] == 2 and got["s-dup"]["sess_last_event_ms"] == t0 + m
    assert got["s-dup~1"]["sess_events"] == 1 and got["s-dup~1"]["sess_last_event_ms"] == t0 + 45 * m
    assert json.loads(StreamPaths.of(tmp_path).layout.read_text())["dedup"] is False  # recorded with the checkpoint


CRASH_CFG = dict(lateness_minutes=5, max_rows_per_batch=300)


def test_bounded_state_and_crash_restart(world, tmp_path, redis_url, redis_client, spark):
    """Bounded state: after sessions time out, the state holds only the active ones (and the ended parts' numbers). Crash: kill -9 the job
    (subprocess) mid-stream, restart: the same online state and offline rows as the uninterrupted run, no duplicates."""
    lines = replayed(world)
    # --- the uninterrupted run (in-process) ------------------------------------------------------------------
    ref_dir = tmp_path / "ref"; ref_dir.mkdir()
    ref = settings_for(redis_url, ref_dir, "ref")
    publish(redis_client, lines, ref.stream_key)
    out = run_stream(ref_dir, ref, StreamConfig(**CRASH_CFG), until_idle=True, spark=spark, progress=False)
    assert out["stopped_by"] == "idle" and out["batches"] >= 5
    rows = offline_rows(ref_dir)
    evicted = set(rows[rows.kind == "timeout"].session_id)
    touched = set(rows.session_id)
    active = touched - evicted
    assert evicted and active
    # Spark's own state store: exactly the sessions not yet timed out
    wm = pd.Timestamp(out["watermark"]).value // 1_000_000
    assert out["state_rows"] == len(active)
    last = rows.groupby("session_id").sess_last_event_ms.max()
    gap = StreamConfig().gap_ms
    assert all(last[s] + gap <= wm for s in evicted)   # timed out: the watermark passed latest event + timeout
    assert all(last[s] + gap > wm for s in active)     # still open
    st = spark.read.format("statestore").option("path", str(StreamPaths.of(ref_dir).checkpoint)) \
        .option("operatorId", 0).option("stateVarName", "bucket").load()   # bucketed state (the default)
    blobs = [decode_bucket(r[0]["sessions"]) for r in st.select("value").collect()]
    keys = [sid for b in blobs for sid, v in b.items() if v[1] is not None]
    assert len(keys) == len(set(keys)) and set(keys) == active
    # an ended part stays only as its number and latest time (for 24 h), so a returning session id starts the next part
    ended = {sid: v for b in blobs for sid, v in b.items() if v[1] is None}
    assert {part_id(s, v[0]) for s, v in ended.items()} == evicted and all(v[2] == last[part_id(s, v[0])] for s, v in ended.items())

    # --- the crashed run: a subprocess killed with SIGKILL mid-stream, then restarted -------------------------
    crash_dir = tmp_path / "crash"; crash_dir.mkdir()
    cr = settings_for(redis_url, crash_dir, "crash")
    publish(redis_client, lines, cr.stream_key)
    env = {**os.environ, "REDIS_URL": redis_url, "PROPENSITY_STREAM": cr.stream_key, "PROPENSITY_FEAST_PROJECT": cr.feast_project,
           "SPARK_MASTER": "local[2]", "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    cmd = [str(Path(sys.executable).parent / "propensity"), "stream", "--data", str(crash_dir), "--until-idle", "--quiet",
           "--lateness-minutes", str(CRASH_CFG["lateness_minutes"]), "--max-rows", str(CRASH_CFG["max_rows_per_batch"])]
    metrics = StreamPaths.of(crash_dir).metrics
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        assert p.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL); p.wait()  # the driver and its JVM, mid-stream
    done, _ = committed_offset(StreamPaths.of(crash_dir).checkpoint)
    assert done is not None and done < out["last_batch"] - 1, "killed too late to be a mid-stream crash"
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped (idle)" in r.stdout

    sessions = sorted(touched)
    assert online_raw(redis_client, cr.feast_project, sessions) == online_raw(redis_client, ref.feast_project, sessions)
    crows = offline_rows(crash_dir)
    assert not crows.duplicated(["batch_id", "session_id", "kind"]).any()
    assert not crows[crows.kind == "timeout"].session_id.duplicated().any()
    key = ["batch_id", "session_id", "kind", "sess_events", "event_timestamp"]
    assert crows[key].sort_values(key).reset_index(drop=True).equals(rows[key].sort_values(key).reset_index(drop=True))
    st = status(crash_dir, cr, redis_client)
    assert st["lag_entries"] == 0 and st["committed_offset"] == st["stream_last_id"]


def test_file_source(world, tmp_path, redis_url, redis_client, spark):
    """The landing folder as the source: same features as the batch fold, malformed lines in the dead-letter folder.
    (Run with the per-session state, `state="sessions"`, so that mode keeps its check against the batch fold.)"""
    import shutil
    files = sorted((world / "events").glob("dt=*/part-*.jsonl"))[:3]
    for f in files:
        (tmp_path / "events" / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / "events" / f.parent.name / f.name)
    bad = malformed_ids(world)
    # and a valid event of its own session, but for one byte that is not UTF-8 (a Latin-1 e acute in its session id)
    first = tmp_path / "events" / files[0].parent.name / files[0].name
    ev = next(orjson.loads(l) for l in first.read_bytes().splitlines() if not any(m.encode() in l for m in bad))
    latin1 = orjson.dumps({**ev, "event_id": "latin1-0", "session_id": "latin1-s"}).replace(b"latin1-s", b"latin1-s\xe9")
    first.write_bytes(first.read_bytes() + latin1 + b"\n")
    lines = [l.rstrip(b"\n") for f in files for l in (tmp_path / "events" / f.parent.name / f.name).read_bytes().splitlines() if l.strip()]
    s = settings_for(redis_url, tmp_path, "files")
    out = run_stream(tmp_path, s, StreamConfig(source="files", lateness_minutes=600, state="sessions"), until_idle=True, spark=spark, progress=False)
    assert out["input_rows"] == len(lines) and out["late_dropped"] == 0
    dead = [json.loads(l) for f in StreamPaths.of(tmp_path).dead_letter_dir.glob("*.jsonl") for l in f.read_text().splitlines()]
    injected = [l for l in lines if any(m.encode() in l for m in bad)] + [latin1]
    assert len(dead) == out["rejected"] == len(injected)
    assert sorted(d["record"] for d in dead) == sorted(l.decode("utf-8", "replace") for l in injected) and all(d["reason"] for d in dead)
    assert [d["reason"] for d in dead if "latin1-0" in d["record"]][0].startswith("record: not valid UTF-8 (byte 0xe9 at offset")
    expected = batch_fold(world, lines)
    got = online_raw(redis_client, s.feast_project, sorted(expected))
    for sid, exp in expected.items():
        same(got[sid], {f.name: exp[f.name] for f in FEATS})


def test_dead_letters_are_idempotent_and_never_lost(redis_client):
    "A re-run batch adds no dead letter twice; a record older than another producer's newer dead letter is still kept."
    from propensity.streaming import write_dead_letters
    rej = pd.DataFrame({"id": ["5-0", "5-1"], "record": ['{"event_id": "x"', ""], "reason": ["record: not valid JSON", "record: empty"]})
    key = dead_letter_key("t:dl")
    assert write_dead_letters(redis_client, "t:dl", rej) == 2
    assert write_dead_letters(redis_client, "t:dl", rej) == 0 and redis_client.xlen(key) == 2  # the batch re-run
    publish(redis_client, [b'{"record": {}, "reason": "collector"}'], key)  # the event collector, newer id
    late = pd.DataFrame({"id": ["6-0"], "record": ["oops"], "reason": ["record: not valid JSON"]})
    assert write_dead_letters(redis_client, "t:dl", late) == 1
    kept = [f for _, f in redis_client.xrange(key) if f.get(b"source") == b"t:dl:6-0"]
    assert len(kept) == 1 and kept[0][b"e"] == b"oops" and redis_client.xlen(key) == 4


def test_staged_dead_letters_are_written_once_in_entry_order(redis_client):
    "The Redis source's slices stage their rejects in any order; the sink writes them in entry order, once, even after a re-run."
    from propensity.streaming import flush_dead_letters, pending_key, stage_dead_letters
    early = pd.DataFrame({"id": ["8-5"], "record": ["a"], "reason": ["r1"]})
    late = pd.DataFrame({"id": ["9-0", "10-2"], "record": ["b", "c"], "reason": ["r2", "r3"]})
    stage_dead_letters(redis_client, "t:st", late); stage_dead_letters(redis_client, "t:st", early)  # the later slice first
    assert flush_dead_letters(redis_client, "t:st") == 3
    dead = [(i, f[b"e"], f[b"reason"], f[b"source"]) for i, f in redis_client.xrange(dead_letter_key("t:st"))]
    assert dead == [(b"8-5", b"a", b"r1", b"t:st:8-5"), (b"9-0", b"b", b"r2", b"t:st:9-0"), (b"10-2", b"c", b"r3", b"t:st:10-2")]
    assert not redis_client.exists(pending_key("t:st"))
    stage_dead_letters(redis_client, "t:st", early); stage_dead_letters(redis_client, "t:st", late)  # the batch re-run after a crash
    assert flush_dead_letters(redis_client, "t:st") == 0 and redis_client.xlen(dead_letter_key("t:st")) == 3
    assert flush_dead_letters(redis_client, "t:st") == 0


@pytest.mark.parametrize("state", ["buckets", "sessions"])
def test_a_session_back_after_its_part_ended_starts_the_next_part(tmp_path, redis_url, redis_client, spark, state):
    """A session id that comes back after the inactivity timer ended its part is part 1 (`s~1`), as the batch job names
    it; it was part 0 again and overwrote the ended part's features in the online store."""
    s = settings_for(redis_url, tmp_path, f"back_{state}")
    t0, m = 1_709_510_400_000, 60_000
    base = dict(user_id=None, anonymous_id="a1", product_id="p000001", category="apparel.jeans", brand="b", price=10.0,
                quantity=None, search_query=None, device="desktop", country="IT", traffic_source="direct", referrer=None, page="/p")
    def ev(eid, sid, t): return orjson.dumps(dict(base, event_id=eid, event_type="product_view", event_time=t, session_id=sid))
    entries = [ev("b1", "s-back", t0), ev("b2", "s-back", t0 + m),
               ev("c1", "s-clock", t0 + 45 * m),   # watermark -> t0 + 35 min: s-back's part (last t0 + 1 min) times out
               ev("c2", "s-clock", t0 + 46 * m),
               ev("b3", "s-back", t0 + 50 * m),    # 49 min after b2, after the eviction: part 1
               ev("c3", "s-clock", t0 + 51 * m)]
    publish(redis_client, entries, s.stream_key)
    out = run_stream(tmp_path, s, StreamConfig(lateness_minutes=10, max_rows_per_batch=1, state=state), until_idle=True,
                     spark=spark, progress=False)
    assert out["input_rows"] == len(entries) and out["sessions_evicted"] >= 1
    got = online(s, tmp_path, ["s-back", "s-back~1"])
    assert got["s-back"]["sess_events"] == 2 and got["s-back"]["sess_last_event_ms"] == t0 + m   # the ended part kept
    assert got["s-back~1"]["sess_events"] == 1 and got["s-back~1"]["sess_last_event_ms"] == t0 + 50 * m
    # every metrics line is a committed batch, once: an idle trigger's next batch id is no batch
    ids = [x["batch_id"] for x in read_metrics(StreamPaths.of(tmp_path).metrics)]
    commits = StreamPaths.of(tmp_path).checkpoint / "commits"
    assert ids and len(ids) == len(set(ids)) and all((commits / str(i)).exists() for i in ids), ids
    assert out["batches"] == len(ids) and out["last_batch"] == max(ids)


def test_a_checkpoint_past_the_streams_newest_entry_is_refused_and_status_starts_nothing(tmp_path, redis_url, redis_client):
    "A fresh store or another REDIS_URL: the job would silently read nothing (and --until-idle never stop)."
    from propensity.streaming import check_offset
    s = settings_for(redis_url, tmp_path, "past")
    paths = StreamPaths.of(tmp_path)
    st = status(tmp_path, s, redis_client)                # nothing ran: no batch, no lag in years
    assert st["committed_batch"] is None and st["lag_ms"] is None and st["recent"] == []
    publish(redis_client, [b'{"event_id": "x"}'], s.stream_key)
    newest = redis_client.xrevrange(s.stream_key, count=1)[0][0].decode()
    for d in ("commits", "offsets"): (paths.checkpoint / d).mkdir(parents=True)
    (paths.checkpoint / "commits" / "0").write_text("v1\n{}\n")
    ms = int(newest.split("-")[0])
    (paths.checkpoint / "offsets" / "0").write_text(f'v1\n{{}}\n{{"id": "{ms - 1}-0"}}\n')
    check_offset(paths, redis_client, s.stream_key)        # behind the newest entry: fine
    (paths.checkpoint / "offsets" / "0").write_text(f'v1\n{{}}\n{{"id": "{ms + 5}-0"}}\n')
    with pytest.raises(ValueError, match=rf"has read stream '{s.stream_key}' up to {ms + 5}-0 \(batch 0\), past its newest entry {newest}"):
        check_offset(paths, redis_client, s.stream_key)
    paths.metrics.parent.mkdir(parents=True, exist_ok=True); paths.metrics.write_text('{"batch_id": 0}\n{"batch_\n')
    assert [m["batch_id"] for m in status(tmp_path, s, redis_client)["recent"]] == [0, "line 2: damaged"]
