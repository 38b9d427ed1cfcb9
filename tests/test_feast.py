"""Feast on the offline Parquet layout and a real Valkey/Redis server (no mocks).

Small offline tables are written with pandas in exactly the layout the batch job writes
(`DIR/offline/<entity>_features/dt=YYYY-MM-DD/*.parquet`), materialized once per module with
real Feast into the session's server, and read back through Feast and through the byte-level
helpers."""
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from propensity.config import Settings
from propensity.features import ENTITIES, FEATURES, features_of
from propensity.feast_repo import (SERVICES, TTLS, VIEWS, connection_string, decode_timestamp, decode_value, encode_timestamp,
                                   encode_value, feature_store, field_name, historical_features, materialize, redis_key, ts_field)
from propensity.onlinestore import redis_client

UTC = timezone.utc
DAYS = [date(2024, 3, 1) + timedelta(days=k) for k in range(4)]  # snapshot of day D: event_timestamp D+1 00:00
USERS = [f"u{i:03d}" for i in range(40)]
VISITORS = [f"a{i:03d}" for i in range(25)]
PRODUCTS = [f"p{i:03d}" for i in range(30)]
SESSIONS = [f"s{i:03d}" for i in range(50)]
SESSION_T0 = datetime(2024, 3, 3, 12, tzinfo=UTC)  # session i: states at T0 + 40 min * i and 20 min later
END = datetime(2024, 3, 5, tzinfo=UTC)             # newest offline event_timestamp (the last snapshot)
PROJECT = "feasttest"                              # its own key space on the shared test server


def value(f, i: int, k: int):
    "Value of feature `f` for entity number `i` in version `k` (snapshot or session state): differs per feature, entity and version."
    j = FEATURES.index(f)
    return {"int64": lambda: i * 1000 + k * 10 + j + (1_709_000_000_000 if f.name.endswith("_ms") else 0),
            "float64": lambda: (i + 1) / 7 + k * 0.1 + j / 1000,
            "string": lambda: f"{f.name[:4]}-{i}-{k}-é",
            "bool": lambda: (i + k + j) % 2 == 0}[f.dtype]()


def rows_of(entity: str) -> pd.DataFrame:
    "Every row of the offline table of `entity`, built from the spec (state features only)."
    key, feats, rows = ENTITIES[entity], features_of(entity, "state"), []
    if entity == "session":
        for i, s in enumerate(SESSIONS):
            for k in range(2):
                rows.append({key: s, "event_timestamp": SESSION_T0 + timedelta(minutes=40 * i + 20 * k),
                             **{f.name: value(f, i, k) for f in feats}})
    else:
        ids = {"user": USERS, "visitor": VISITORS, "product": PRODUCTS}[entity]
        for k, day in enumerate(DAYS):
            ts = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
            rows += [{key: e, "event_timestamp": ts, **{f.name: value(f, i, k) for f in feats}} for i, e in enumerate(ids)]
    df = pd.DataFrame(rows)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    for f in feats: df[f.name] = df[f.name].astype({"int64": "int64", "float64": "float64", "string": "object", "bool": "bool"}[f.dtype])
    return df


def write_table(df: pd.DataFrame, file, writer: str) -> None:
    "Write `df` as one of the writers of the offline tables does."
    if writer == "pandas":          # datetime64[ns, UTC], with pandas metadata
        df.to_parquet(file, index=False)
        return
    t = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)  # Spark writes no pandas metadata
    i = t.schema.get_field_index("event_timestamp")
    if writer == "spark":           # TimestampType with outputTimestampType=TIMESTAMP_MICROS (the batch job): us, UTC
        pq.write_table(t.set_column(i, "event_timestamp", t["event_timestamp"].cast(pa.timestamp("us", "UTC"))), file)
    elif writer == "spark-int96":   # Spark's default: INT96, read back without a time zone
        pq.write_table(t.set_column(i, "event_timestamp", t["event_timestamp"].cast(pa.timestamp("ns"))), file,
                       use_deprecated_int96_timestamps=True)
    else: raise ValueError(writer)


def write_offline(d, writers=None, entities=tuple(ENTITIES)) -> dict:
    "Write the tables of `entities` under `d`, one `dt=` folder per day, as Spark leaves them (plus `_SUCCESS`)."
    writers = writers or {"user": "pandas", "visitor": "spark", "product": "spark", "session": "spark"}
    frames = {e: rows_of(e) for e in entities}
    for e, df in frames.items():
        dt = df["event_timestamp"].dt.date if e == "session" else df["event_timestamp"].dt.date - timedelta(days=1)
        for day, part in df.groupby(dt):
            folder = d / "offline" / f"{e}_features" / f"dt={day:%Y-%m-%d}"
            folder.mkdir(parents=True)
            write_table(part.reset_index(drop=True), folder / "part-00000.parquet", writers[e])
        (d / "offline" / f"{e}_features" / "_SUCCESS").touch()
    return frames


def expected(frames, entity: str, key: str, t: datetime, ttl: timedelta) -> dict | None:
    "The state features of the newest row of `key` with event_timestamp in [t - ttl, t], or None."
    df = frames[entity]
    df = df[(df[ENTITIES[entity]] == key) & (df["event_timestamp"] <= t) & (df["event_timestamp"] >= t - ttl)]
    if df.empty: return None
    row = df.sort_values("event_timestamp").iloc[-1]
    return {f.name: py(row[f.name]) for f in features_of(entity, "state")} | {"event_timestamp": row["event_timestamp"]}


def py(v):
    "A pandas/numpy cell as a plain Python value (None for missing)."
    if v is None or (not isinstance(v, str) and pd.isna(v)): return None
    return v.item() if hasattr(v, "item") else v


TTL = {"session": timedelta(days=1), "user": timedelta(days=2), "visitor": timedelta(days=2), "product": timedelta(days=2)}  # daily snapshots
SESSION_END = SESSION_T0 + timedelta(minutes=40 * (len(SESSIONS) - 1) + 20)  # the newest session state
VIEW_END = {"user": END, "visitor": END, "product": END, "session": SESSION_END}  # without `end`, each view is loaded to its own newest row


@pytest.fixture(scope="module")
def world(tmp_path_factory, redis_url):
    d = tmp_path_factory.mktemp("feast")
    frames = write_offline(d)
    settings = Settings(data_dir=d, redis_url=redis_url, feast_project=PROJECT)
    r = redis_client(redis_url)
    for k in r.scan_iter(match=b"*" + PROJECT.encode()): r.delete(k)  # a previous run on an external REDIS_URL
    summary = materialize(settings)
    store = feature_store(settings)
    try:
        yield dict(d=d, frames=frames, settings=settings, summary=summary, store=store, r=r)
    finally:
        r.close()


def test_ttls_and_summary(world):
    assert TTLS == TTL
    s = world["summary"]
    assert s["end"] == END  # the newest offline event_timestamp of all views
    assert {e: s["views"][v]["end"] for e, v in VIEWS.items()} == VIEW_END
    in_window = [sid for i, sid in enumerate(SESSIONS) if SESSION_T0 + timedelta(minutes=40 * i + 20) >= SESSION_END - TTL["session"]]
    assert {v: s["views"][v]["rows"] for v in VIEWS.values()} == {
        "user_features": len(USERS), "visitor_features": len(VISITORS), "product_features": len(PRODUCTS), "session_features": len(in_window)}
    assert 0 < len(in_window) < len(SESSIONS)  # some sessions are older than the session TTL
    assert s["seconds"] > 0


def online(store, rows):
    return store.get_online_features(features=store.get_feature_service("propensity_v1"), entity_rows=rows).to_dict()


def samples():
    "Entity rows that combine sampled users, browsers, products and sessions (some sessions older than the TTL)."
    return [{"user_id": USERS[i % len(USERS)], "anonymous_id": VISITORS[(5 * i) % len(VISITORS)], "product_id": PRODUCTS[(3 * i) % len(PRODUCTS)],
             "session_id": SESSIONS[(7 * i) % len(SESSIONS)]} for i in range(0, 40, 3)]


def test_online_features_are_the_latest_offline_values(world):
    store, frames = world["store"], world["frames"]
    rows = samples()
    got = online(store, rows)
    state = features_of(when="state")
    assert set(got) == set(ENTITIES.values()) | {f.name for f in state}
    loaded_sessions = 0
    for n, row in enumerate(rows):
        for e, key in ENTITIES.items():
            exp = expected(frames, e, row[key], VIEW_END[e], TTL[e])  # what materialize loads: newest row within the TTL
            for f in features_of(e, "state"):
                v = got[f.name][n]
                if exp is None:
                    assert v is None, (f.name, row[key])
                else:
                    assert v == exp[f.name] and type(v) is type(exp[f.name]), (f.name, row[key], v, exp[f.name])
            loaded_sessions += e == "session" and exp is not None
    assert 0 < loaded_sessions < len(rows)
    # unknown entities: every feature is null
    none = online(store, [{"user_id": "nobody", "anonymous_id": "nobody", "product_id": "nothing", "session_id": "never"}])
    assert all(none[f.name] == [None] for f in state)


def test_redis_bytes_match_feast(world):
    store, frames, r, project = world["store"], world["frames"], world["r"], world["settings"].feast_project
    rows = samples()
    got = online(store, rows)
    for n, row in enumerate(rows):
        for e, key in ENTITIES.items():
            view, feats = VIEWS[e], features_of(e, "state")
            raw = r.hmget(redis_key(e, row[key], project), [field_name(view, f.name) for f in feats] + [ts_field(view)])
            assert [decode_value(b, f.dtype) for b, f in zip(raw, feats)] == [got[f.name][n] for f in feats]
            exp = expected(frames, e, row[key], VIEW_END[e], TTL[e])
            if exp is None:
                assert raw == [None] * len(raw)
                continue
            assert decode_timestamp(raw[-1]) == exp["event_timestamp"]
            assert raw[:-1] == [encode_value(exp[f.name], f.dtype) for f in feats]  # byte-identical writer
    # the hash of a user: one field per user feature plus its timestamp field, nothing else
    assert r.ttl(redis_key("user", USERS[0], project)) == -1  # no Redis expiry: the TTL is Feast's, not Redis'
    fields = r.hkeys(redis_key("user", USERS[0], project))
    assert sorted(fields) == sorted([field_name("user_features", f.name) for f in features_of("user", "state")] + [ts_field("user_features")])
    # a hash written with the helpers is read by Feast
    feats = features_of("user", "state")
    vals = {f.name: value(f, 99, 9) for f in feats}
    r.hset(redis_key("user_id", "u-written", project), mapping={
        ts_field("user_features"): encode_timestamp(END), **{field_name("user_features", f.name): encode_value(vals[f.name], f.dtype) for f in feats}})
    back = store.get_online_features(features=[f"user_features:{f.name}" for f in feats], entity_rows=[{"user_id": "u-written"}]).to_dict()
    assert {f.name: back[f.name][0] for f in feats} == vals


def snap(k: int) -> datetime:
    "event_timestamp of the snapshot of DAYS[k]."
    return datetime.combine(DAYS[k] + timedelta(days=1), datetime.min.time(), UTC)


PIT_CASES = [  # (timestamp, the user/product snapshot it must see, or None)
    (snap(1) + timedelta(hours=12), 1),                 # between two snapshots: the earlier one
    (snap(2), 2),                                       # exactly at a snapshot: that snapshot
    (snap(2) - timedelta(microseconds=1), 1),           # just before it: nothing from it
    (snap(0) - timedelta(seconds=1), None),             # before the first snapshot
    (snap(3) + timedelta(days=1, hours=23), 3),         # within the 2-day TTL of the last snapshot
    (snap(3) + timedelta(days=2, seconds=1), None),     # older than the TTL
    (SESSION_T0 + timedelta(minutes=40 * 5 + 10), 1),   # between the two states of session s005
    (SESSION_T0 + timedelta(minutes=40 * 5 + 20), 1),   # at its second state
    (SESSION_T0 + timedelta(days=1, minutes=40 * 5 + 21), 2),  # 1 day + 1 min after it: beyond the session TTL
]


SNAPSHOTS = ("user", "visitor", "product")  # the daily views


def pit_rows():
    rows = []
    for n, (t, _) in enumerate(PIT_CASES):
        for i in (0, 7, 23):
            rows.append({"user_id": USERS[i], "anonymous_id": VISITORS[i], "product_id": PRODUCTS[i], "session_id": SESSIONS[5 if n >= 6 else i],
                         "event_timestamp": pd.Timestamp(t), "row": len(rows)})
    return rows


def check_row(out_row, row, frames, views=tuple(ENTITIES)):
    "Every feature of `views` in `out_row` equals the newest offline row at or before the row's time within the TTL (null if none)."
    found = {}
    for e in views:
        exp = expected(frames, e, row[ENTITIES[e]], row["event_timestamp"], TTL[e])
        if exp is not None: assert exp["event_timestamp"] <= row["event_timestamp"]  # never from a later row
        for f in features_of(e, "state"):
            v = py(out_row[f.name])
            assert v == (None if exp is None else exp[f.name]), (f.name, row, v, exp and exp[f.name])
        found[e] = exp is not None
    return found


@pytest.mark.filterwarnings("ignore::FutureWarning")  # pandas deprecations raised inside Dask
def test_feast_historical_features_point_in_time(world):
    "Feast's own point-in-time join, on rows where every requested view has a row within its TTL."
    store, frames = world["store"], world["frames"]
    rows = [r for r in pit_rows() if all(expected(frames, e, r[ENTITIES[e]], r["event_timestamp"], TTL[e]) for e in SNAPSHOTS)]
    entity_df = pd.DataFrame(rows).drop(columns="session_id")
    refs = [f"{VIEWS[e]}:{f.name}" for e in SNAPSHOTS for f in features_of(e, "state")]
    out = store.get_historical_features(entity_df=entity_df, features=refs).to_df().set_index("row")
    assert sorted(out.index) == [r["row"] for r in rows]
    for r in rows: check_row(out.loc[r["row"]], r, frames, SNAPSHOTS)
    # the snapshot each case must see, spelled out: user u000's first int64 feature is i*1000 + k*10 + j
    f = next(f for f in features_of("user", "state") if f.dtype == "int64")
    assert {(r["event_timestamp"], py(out.loc[r["row"], f.name])) for r in rows if r["user_id"] == "u000"} == \
           {(pd.Timestamp(t), value(f, 0, k)) for t, k in PIT_CASES if k is not None}


def test_historical_features_keeps_every_row(world):
    "`historical_features`: one row per entity row, in order, nulls beyond the TTL, for unknown and missing entities."
    store, frames = world["store"], world["frames"]
    rows = pit_rows()
    rows += [dict(rows[0], user_id="ghost", row=len(rows)), dict(rows[1], user_id=None, row=len(rows) + 1),
             dict(rows[2], row=len(rows) + 2), dict(rows[2], row=len(rows) + 3)]  # unknown user, no user, duplicates
    rows = rows[::-1]  # not in time order
    entity_df = pd.DataFrame(rows).astype({"event_timestamp": "datetime64[ns, UTC]"})
    out = historical_features(store, entity_df, "propensity_v1")
    assert list(out["row"]) == [r["row"] for r in rows] and list(out.index) == list(entity_df.index)
    assert len(out.columns) == len(entity_df.columns) + len(features_of(when="state"))
    found = [check_row(out.iloc[n], r, frames) for n, r in enumerate(rows)]
    for e in ENTITIES:  # every view both found and missed something
        assert any(x[e] for x in found) and not all(x[e] for x in found), e
    dtypes = {"int64": "Int64", "float64": "float64", "string": "object", "bool": "boolean"}
    assert {f.name: str(out[f.name].dtype) for f in features_of(when="state")} == {f.name: dtypes[f.dtype] for f in features_of(when="state")}


def test_feature_service_is_derived_from_the_spec(world):
    store = world["store"]
    assert [fs.name for fs in store.list_feature_services()] == list(SERVICES)
    fs = store.get_feature_service("propensity_v1")
    by_view = {p.name: [(f.name, f.dtype.to_value_type().name) for f in p.features] for p in fs.feature_view_projections}
    feast_type = {"int64": "INT64", "float64": "DOUBLE", "string": "STRING", "bool": "BOOL"}
    assert by_view == {VIEWS[e]: [(f.name, feast_type[f.dtype]) for f in features_of(e, "state")] for e in ENTITIES}
    served = {f for fl in by_view.values() for f, _ in fl}
    assert served == {f.name for f in FEATURES if f.when == "state"}
    assert not served & {f.name for f in FEATURES if f.when == "request"}
    views = {v.name: v for v in store.list_feature_views()}
    assert {n: (views[n].ttl, views[n].entities) for n in views} == {VIEWS[e]: (TTL[e], [e]) for e in ENTITIES}
    assert {e.name: e.join_key for e in store.list_entities()} == ENTITIES


@pytest.mark.parametrize("url,expected", [
    ("redis://127.0.0.1:6399", "127.0.0.1:6399,db=0"),
    ("redis://cache:6380/3", "cache:6380,db=3"),
    ("redis://:s3cret@cache:6380/1", "cache:6380,db=1,password=s3cret"),
    ("redis://app:s3cret@cache/2", "cache:6379,db=2,username=app,password=s3cret"),
    ("rediss://:pa%2Css%40w0rd@secure.example.com:6380/0", 'secure.example.com:6380,db=0,password="pa\\u002css@w0rd",ssl=true'),
    ("rediss://secure.example.com?ssl_cert_reqs=none", "secure.example.com:6379,db=0,ssl=true,ssl_cert_reqs=none"),
    ("redis://:123@h:1/0", 'h:1,db=0,password="123"'),
    ("unix:///run/valkey.sock?db=2", "localhost:6379,db=2,unix_socket_path=/run/valkey.sock"),
])
def test_connection_string(url, expected):
    assert connection_string(url) == expected
    # Feast's parser gives redis-py the same connection arguments redis-py itself takes from the URL
    from feast.infra.online_stores.redis import RedisOnlineStore
    nodes, kw = RedisOnlineStore._parse_connection_string(expected)
    ours = redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **kw).connection_pool.connection_kwargs
    ref = redis.Redis.from_url(url).connection_pool.connection_kwargs
    keys = ("db", "username", "password", "path", "ssl_cert_reqs") + (("host", "port") if not url.startswith("unix") else ())
    unset = {"db": 0, "port": 6379, "ssl_cert_reqs": "required" if url.startswith("rediss") else None}  # redis-py's defaults
    assert {k: ours.get(k, unset.get(k)) for k in keys} == {k: ref.get(k, unset.get(k)) for k in keys}
    assert redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **kw).connection_pool.connection_class \
        is redis.Redis.from_url(url).connection_pool.connection_class


def test_connection_string_refuses_what_feast_cannot_hold():
    for url, msg in [("http://h:1", "expected redis://"), ("redis://[::1]:6379", "IPv6"), ("redis://h/x", "not a number")]:
        with pytest.raises(ValueError, match=msg): connection_string(url)


def test_materialize_again_is_harmless(world, redis_url):
    "A second run, or one with an earlier `end`, leaves the newest values in place (Feast never writes an older row over a newer one)."
    store, settings = world["store"], world["settings"]
    assert store.config.online_store.connection_string == connection_string(redis_url)
    before = online(store, samples())
    again = materialize(settings, verbose=False)
    assert {v: x["rows"] for v, x in again["views"].items()} == {v: x["rows"] for v, x in world["summary"]["views"].items()}
    older = materialize(settings, end=snap(2), verbose=False)
    assert older["end"] == snap(2) and older["views"]["user_features"]["rows"] == len(USERS)
    after = online(store, samples())
    for name, vals in before.items():  # what was there stays; the earlier window only adds sessions that had expired
        assert [a if b is not None else None for a, b in zip(after[name], vals)] == vals, name
    assert after != before


def test_spark_default_int96_timestamps(tmp_path, redis_url):
    """A table as Spark writes it by default (INT96, no time zone) materializes correctly (taken as UTC);
    `historical_features` refuses it with the fix, since Feast's Dask join fails on it at random."""
    frames = write_offline(tmp_path, {"user": "spark-int96"}, ("user",))
    assert pq.read_schema(next((tmp_path / "offline" / "user_features").rglob("*.parquet"))).field("event_timestamp").type == pa.timestamp("ns")
    settings = Settings(data_dir=tmp_path, redis_url=redis_url, feast_project="feastint96")
    s = materialize(settings, verbose=False)
    assert s["end"] == END and s["views"]["user_features"]["rows"] == len(USERS)
    assert "skipped" in s["views"]["product_features"] and "skipped" in s["views"]["session_features"]  # no tables yet
    store = feature_store(settings)
    got = store.get_online_features(features=[f"user_features:{f.name}" for f in features_of("user", "state")],
                                    entity_rows=[{"user_id": u} for u in USERS[:5]]).to_dict()
    for n, u in enumerate(USERS[:5]):
        exp = expected(frames, "user", u, END, TTL["user"])
        assert {f.name: got[f.name][n] for f in features_of("user", "state")} == {f.name: exp[f.name] for f in features_of("user", "state")}
    entity_df = pd.DataFrame({"user_id": USERS[:2], "anonymous_id": VISITORS[:2], "product_id": PRODUCTS[:2], "session_id": SESSIONS[:2],
                              "event_timestamp": pd.Timestamp(snap(1))})
    with pytest.raises(ValueError, match="no time zone.*TIMESTAMP_MICROS"):
        historical_features(store, entity_df)
