"""The Spark batch job on a simulated world: counts against the simulator's truth, point-in-time correctness,
no leakage at scoring points, feature values recomputed independently, and the REES46 sample end to end."""
import json
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from propensity.adapters import ingest
from propensity.batch import BatchConfig, fold_sessions, run_batch
from propensity.contracts import EVENT, read_table
from propensity.features import ScoringPolicy, features_of, model_features
from propensity.simulate import load_truth, simulate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DAY = 86_400_000


@pytest.fixture(scope="module")
def world(tmp_path_factory, spark):
    out = tmp_path_factory.mktemp("batch") / "w"
    simulate("small", 4, 7, out, progress=False)
    summary = run_batch(out, spark=spark, progress=False)
    return out, summary


def _read(path):
    return read_table(path)


def test_counts_reconcile_with_the_simulators_truth(world):
    out, s = world
    truth = load_truth(out)
    delivery = read_table(out / "truth" / "delivery")
    assert s["rejected_records"] == (delivery.kind == "malformed").sum() > 0
    assert s["duplicates_dropped"] == (delivery.kind == "duplicate").sum() > 0
    assert s["events"] == len(read_table(out / "tables" / "events", EVENT))
    assert s["sessions"] == len(truth)
    assert s["bots"] == (truth.kind == "bot").sum()                  # the bot rule finds exactly the bots
    assert s["single_heartbeat"] == (truth.kind == "bounce").sum()
    assert s["eligible"] == truth.eligible.sum()
    assert s["converted"] == truth[truth.eligible].label.sum()
    rejected = [json.loads(l) for f in (out / "rejected" / "batch").glob("*.json") for l in f.read_text().splitlines()]
    assert len(rejected) == s["rejected_records"] and all(r["reason"] and r["source"] for r in rejected)
    assert json.loads((out / "offline" / "_batch_summary.json").read_text())["events"] == s["events"]


def test_labels_and_eligibility_equal_the_truth(world):
    out, _ = world
    sessions = _read(out / "offline" / "sessions").set_index("session_id")
    truth = load_truth(out).set_index("session_id")
    j = truth.join(sessions[["label", "eligible"]], rsuffix="_batch")
    assert (j.label == j.label_batch).all()
    assert (j.eligible == j.eligible_batch).all()


def test_training_set_shape_and_content(world):
    out, s = world
    tr = _read(out / "training" / "training_set")
    names = [f.name for f in model_features()]
    assert len(names) >= 40 and set(names) <= set(tr.columns)
    assert len(tr) == s["training_rows"] > 1000
    assert tr[names].notna().all().all()                             # defaults fill every gap
    assert set(tr.trigger) == {"add_to_cart", "cart_view", "product_view", "sampled"}
    assert {"device", "country", "traffic_source", "label", "event_timestamp"} <= set(tr.columns)
    truth = load_truth(out).set_index("session_id")
    assert truth.loc[tr.session_id.unique()].eligible.all()          # only eligible sessions
    assert (tr.label.to_numpy() == truth.loc[tr.session_id, "label"].to_numpy()).all()
    # nothing at or after a session's first purchase
    ev = read_table(out / "tables" / "events", EVENT)
    first_buy = ev[ev.event_type == "purchase"].groupby("session_id").event_time.min()
    fb = first_buy.reindex(tr.session_id).to_numpy()
    assert not (_ms(tr.event_timestamp) >= np.nan_to_num(fb, nan=np.inf)).any()


def test_training_joins_build_hash_maps_instead_of_sorting(world, spark):
    """The training set's joins are equi-joins on (entity key, day) of two shuffled sides. With `TRAINING_JOIN_CONF`
    (as `run_batch` runs them) adaptive execution builds a hash map of the smaller side's partitions instead of
    sorting both sides (a threshold below the advisory partition size would silently do nothing); outside it the
    session's own setting stands: the same join sorts and merges, and the setting is back to its value before."""
    from pyspark.sql import functions as F
    from propensity.batch import TRAINING_JOIN_CONF, spark_conf
    key, out = "spark.sql.adaptive.maxShuffledHashJoinLocalMapThreshold", world[0]
    def joined() -> str:
        pts = spark.read.parquet(str(out / "training" / "training_set")).select("user_id", "dt", "point_id")
        users = spark.read.parquet(str(out / "offline" / "user_features")).select("user_id", "dt", "user_orders_lifetime")
        q = pts.join(users, ["user_id", "dt"], "left").agg(F.count("point_id"), F.sum("user_orders_lifetime"))
        q.collect()
        plan = q._jdf.queryExecution().executedPlan().toString()
        assert "isFinalPlan=true" in plan, plan
        return plan.split("== Initial Plan ==")[0]  # the plan as run, not the one planned before the shuffles
    session = spark.conf.get(key)
    with spark_conf(spark, {"spark.sql.autoBroadcastJoinThreshold": "-1"}):  # the test world's tables would be broadcast
        with spark_conf(spark, TRAINING_JOIN_CONF):
            assert spark.conf.get(key) == TRAINING_JOIN_CONF[key]
            plan = joined()
            assert "ShuffledHashJoin" in plan and "SortMergeJoin" not in plan, plan
        assert spark.conf.get(key) == session
        plan = joined()
        assert "SortMergeJoin" in plan and "ShuffledHashJoin" not in plan, plan


def _ms(ts: pd.Series) -> np.ndarray:
    return (ts.dt.tz_convert("UTC").astype("int64") // 10 ** {"ns": 6, "us": 3, "ms": 0}[ts.dt.unit]).to_numpy()


def test_user_features_are_point_in_time(world):
    """A user feature that changes on day D is never visible before D: at every training point, the lifetime
    order count equals the user's orders placed before the point's day began (recomputed from the orders table)."""
    out, _ = world
    tr = _read(out / "training" / "training_set")
    orders = read_table(out / "tables" / "orders.parquet")
    tr = tr[tr.user_id.notna()].copy()
    day_start = _ms(tr.event_timestamp) // DAY * DAY
    o = orders[orders.user_id.notna()].groupby("user_id").order_time.apply(np.sort)
    expected = [int(np.searchsorted(o[u], d)) if u in o.index else 0 for u, d in zip(tr.user_id, day_start)]
    assert (tr.user_orders_lifetime.to_numpy() == np.array(expected)).all()
    # and some users really do change during the window (so the check has teeth)
    changed = tr.groupby("user_id").user_orders_lifetime.nunique()
    assert (changed > 1).sum() > 10


def test_visitor_features_are_point_in_time(world):
    """The browser's history at every training point, recomputed from the simulator's truth: its sessions (bots
    excluded) that ended in the 90 and 7 days before the point's day began, those with a purchase, the days since the
    latest. Nothing of the point's own day is visible, so the point's own session never counts."""
    out, _ = world
    tr = _read(out / "training" / "training_set")
    truth = load_truth(out)
    hist = truth[truth.kind != "bot"].groupby("anonymous_id")[["end_time", "label"]].apply(
        lambda g: g.sort_values("end_time")[["end_time", "label"]].to_numpy(np.int64))
    day_start = _ms(tr.event_timestamp) // DAY * DAY
    exp = {k: [] for k in ("n90", "n7", "buys", "days")}
    for a, d in zip(tr.anonymous_id, day_start):
        h = hist.get(a)
        seen = h[(h[:, 0] < d) & (h[:, 0] >= d - 90 * DAY)] if h is not None else np.zeros((0, 2), np.int64)
        exp["n90"].append(len(seen)); exp["n7"].append(int((seen[:, 0] >= d - 7 * DAY).sum())); exp["buys"].append(int(seen[:, 1].sum()))
        exp["days"].append((d - seen[-1, 0]) / DAY if len(seen) else 999.0)
    assert (tr.visitor_sessions_90d.to_numpy() == np.array(exp["n90"])).all()
    assert (tr.visitor_sessions_7d.to_numpy() == np.array(exp["n7"])).all()
    assert (tr.visitor_purchase_sessions_90d.to_numpy() == np.array(exp["buys"])).all()
    np.testing.assert_allclose(tr.visitor_days_since_last_session.to_numpy(), np.array(exp["days"]), rtol=1e-12)
    n = tr.visitor_sessions_90d.to_numpy()
    np.testing.assert_allclose(tr.visitor_purchase_rate_90d[n > 0], (tr.visitor_purchase_sessions_90d / n)[n > 0], rtol=1e-12)
    assert (tr.visitor_purchase_rate_90d[n == 0] == 0).all() and (tr.visitor_mean_log_steps_90d[n == 0] == 0).all()
    steps = tr.visitor_mean_log_steps_90d[n > 0]  # 0 for a browser whose sessions were all bounces (no browsing step)
    assert (steps >= 0).all() and (steps > 0).mean() > 0.5
    # the check has teeth: many points have a history, and it grows over the window for some browsers
    assert (n > 0).sum() > 1000 and (tr.groupby("anonymous_id").visitor_sessions_90d.nunique() > 1).sum() > 100


def test_grace_window_labels_a_session_followed_by_the_same_shoppers_purchase(spark):
    """With a grace window, a session without a purchase is labelled when the same shopper buys within the window after
    it ends: the same user, or the same browser (an anonymous visit, then a purchase logged in on that device)."""
    from propensity.batch import label_sessions
    M = 60_000
    cols = "session_id string, user_id string, anonymous_id string, event_timestamp long, n_purchases long, " \
           "first_purchase_ms long, is_bot boolean, single_heartbeat boolean, no_product boolean"
    row = lambda sid, uid, anon, end, buy=None: (sid, uid, anon, end, int(buy is not None), buy, False, False, False)
    sessions = spark.createDataFrame([
        row("u-browse", "u1", "a1", 0), row("u-buy", "u1", "a9", 40 * M, 50 * M),          # same user, other device, +50 min
        row("a-browse", None, "a2", 0), row("a-buy", "u2", "a2", 15 * M, 20 * M),         # anonymous, then logged in, +20 min
        row("late", None, "a3", 0), row("late-buy", None, "a3", 100 * M, 110 * M),        # +110 min: outside the window
        row("other", None, "a4", 0), row("other-buy", None, "a5", 5 * M, 10 * M),         # someone else's purchase
        row("before", None, "a6", 30 * M), row("before-buy", None, "a6", 20 * M, 20 * M),  # a purchase before it ended
    ], cols)
    for grace, labelled in [(60, {"u-browse", "a-browse"}), (0, set()), (15, set())]:
        got = label_sessions(sessions, BatchConfig(grace_minutes=grace)).toPandas().set_index("session_id")
        buyers = {s for s in got.index if s.endswith("-buy")}
        assert set(got.index[got.label]) == buyers | labelled, grace
        assert got.eligible.all() and got.loc["a-buy", "person"] == "u2" and got.loc["a-browse", "person"] == "a2"


def test_visitor_history_expires_into_rows_of_defaults_for_the_ttl(spark):
    """A browser's only session leaves the 90-day window: for the view's TTL after that its snapshots hold the
    defaults (so a join that takes the latest row within the TTL finds no stale history), then it has no row."""
    import inspect
    from datetime import timedelta
    from propensity.batch import _days_frame, visitor_snapshots
    from propensity.feast_repo import TTLS
    tail = inspect.signature(visitor_snapshots).parameters["tail_days"].default
    assert TTLS["visitor"] == timedelta(days=tail)
    d0 = 19_800  # a day number (days since 1970-01-01)
    cols = "anonymous_id string, event_timestamp long, is_bot boolean, label_in_session boolean, sess_add_to_cart long, " \
           "sess_page_views long, sess_searches long, sess_product_views long"
    sessions = spark.createDataFrame([("a1", d0 * DAY + 3_600_000, False, True, 1, 2, 0, 3),      # day 0, bought
                                      ("a1", (d0 + 5) * DAY + 60_000, False, False, 0, 0, 0, 0),  # day 5, a bounce
                                      ("a2", d0 * DAY + 60_000, True, False, 0, 50, 0, 30)], cols)  # a bot
    snap = visitor_snapshots(sessions, _days_frame(spark, list(range(d0, d0 + 100)))).toPandas()
    snap["asof"] = (pd.to_datetime(snap.dt) - pd.Timestamp("1970-01-01")).dt.days - d0   # dt: the as-of day
    assert set(snap.anonymous_id) == {"a1"}                                                  # bots are left out
    by = snap.set_index("asof").sort_index()
    assert list(by.index) == list(range(1, 96 + tail))       # from the day after the first session to the tail's end
    assert by.loc[1, ["visitor_sessions_90d", "visitor_sessions_7d", "visitor_purchase_sessions_90d"]].tolist() == [1, 1, 1]
    assert by.loc[6, "visitor_sessions_90d"] == 2 and by.loc[6, "visitor_purchase_rate_90d"] == 0.5
    assert by.loc[6, "visitor_mean_log_steps_90d"] == pytest.approx(np.log1p(5) / 2)
    assert by.loc[6, "visitor_days_since_last_session"] == pytest.approx(1 - 1 / 1440)
    assert by.loc[13, "visitor_sessions_7d"] == 0 and by.loc[12, "visitor_sessions_7d"] == 1    # 7 days after day 5
    assert by.loc[90, "visitor_sessions_90d"] == 2 and by.loc[91, "visitor_sessions_90d"] == 1   # day 0 left the window
    last = by.loc[96:]                                       # day 5 left it too: rows of defaults for the TTL
    assert (last.visitor_sessions_90d == 0).all() and (last.visitor_days_since_last_session == 999.0).all()
    assert (last.visitor_purchase_rate_90d == 0).all() and (last.visitor_mean_log_steps_90d == 0).all()


def test_product_window_counts_recomputed(world):
    out, _ = world
    snap = _read(out / "offline" / "product_features")
    ev = read_table(out / "tables" / "events", EVENT)
    views = ev[ev.event_type == "product_view"]
    rows = snap[snap.prod_views_30d > 0].sample(200, random_state=0)
    for r in rows.itertuples():
        asof = _ms(pd.Series([r.event_timestamp]))[0]
        v = views[views.product_id == r.product_id].event_time
        assert r.prod_views_7d == ((v < asof) & (v >= asof - 7 * DAY)).sum()
        assert r.prod_views_30d == ((v < asof) & (v >= asof - 30 * DAY)).sum()
        assert 0 <= r.prod_view_to_purchase_7d <= 1


def test_offline_session_features_equal_the_fold_over_canonical_events(world):
    out, _ = world
    sf = _read(out / "offline" / "session_features").set_index("session_id")
    ev = read_table(out / "tables" / "events", EVENT).sort_values(["session_id", "event_time", "event_id"])
    sids = random.Random(1).sample(sorted(sf.index), 300)
    rows = pd.DataFrame(fold_sessions(ev[ev.session_id.isin(sids)].reset_index(drop=True), BatchConfig()))
    rows = rows[rows.kind == "session"].set_index("session_id")
    for f in features_of("session", "state"):
        a, b = sf.loc[sids, f.name].to_numpy(), rows.loc[sids, f.name].to_numpy()
        if f.dtype == "float64": np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-12, err_msg=f.name)
        else: assert (a == b).all(), f.name


def test_no_feature_at_a_point_changes_when_later_events_change(world):
    """Alter events at and after a scoring point (drop them, change prices and quantities, add a purchase): the
    features of that point are identical."""
    out, _ = world
    ev = read_table(out / "tables" / "events", EVENT).sort_values(["session_id", "event_time", "event_id"])
    cfg = BatchConfig(policy=ScoringPolicy(sample_rate=0.3))
    rng = random.Random(3)
    sids = rng.sample(sorted(ev.session_id[ev.event_type == "add_to_cart"].unique()), 150)
    checked = 0
    for sid in sids:
        s = ev[ev.session_id == sid].reset_index(drop=True)
        pts = [r for r in fold_sessions(s, cfg) if r["kind"] == "point"]
        if not pts: continue
        p = rng.choice(pts)
        at, later = s[s.event_time < p["event_timestamp"]], s[s.event_time >= p["event_timestamp"]].copy()
        later["price"] = later["price"] * 3 + 1
        later["quantity"] = later["quantity"].fillna(1) + 4
        buy = later.iloc[:1].assign(event_id="x-buy", event_type="purchase", product_id="p000001", price=9.0, quantity=1,
                                    event_time=p["event_timestamp"] + 1)  # a purchase right after the point
        for variant in (at, pd.concat([at, later, buy]).sort_values(["event_time", "event_id"])):
            again = {r["point_id"]: r for r in fold_sessions(variant.reset_index(drop=True), cfg) if r["kind"] == "point"}
            got = again.get(p["point_id"])
            if variant is at:
                assert got is None  # the point's own event is gone: no point, nothing else moves
                continue
            assert got == p, (sid, p["point_id"])
        checked += 1
    assert checked > 100


def test_rees46_sample_runs_through_sessions_labels_and_features(tmp_path, spark):
    f = SHARED / "rees46_2019-Oct-sample.csv"
    if not f.exists(): pytest.skip(f"REES46 sample not found at {f}")
    ingest("rees46", f, tmp_path)
    s = run_batch(tmp_path, spark=spark, progress=False)
    assert s["source"] == "tables" and s["events"] == 1000
    sessions = _read(tmp_path / "offline" / "sessions")
    assert len(sessions) == s["sessions"] >= 372                        # splits only at 30-minute gaps
    raw = pd.read_csv(f)
    buyers = set(raw.user_session[raw.event_type == "purchase"])
    assert set(sessions.session_id[sessions.label].str.split("~").str[0]) == buyers
    sf = _read(tmp_path / "offline" / "session_features")
    assert len(sf) == len(sessions) and sf.sess_product_views.sum() == (raw.event_type == "view").sum()
    assert s["user_rows"] == 0 and s["product_rows"] == 0              # no users/products tables in a dump
    assert s["training_rows"] > 0


@pytest.fixture(scope="module")
def store(world, redis_url):
    from propensity.config import Settings
    from propensity.feast_repo import feature_store, materialize
    out, _ = world
    settings = Settings.from_env({"REDIS_URL": redis_url, "PROPENSITY_FEAST_PROJECT": "batchtest"})
    summary = materialize(settings, out, verbose=False)
    return feature_store(settings, out), summary


def test_spark_as_of_join_equals_feasts_point_in_time_join(world, store):
    """The training set's user and product features (a Spark equi-join on the point's day, relying on dense daily
    snapshots) equal Feast's own point-in-time join on a sample of points."""
    from propensity.feast_repo import historical_features
    out, _ = world
    fs, _ = store
    tr = _read(out / "training" / "training_set")
    sample = pd.concat([tr[tr.user_id.notna()].sample(150, random_state=1), tr[tr.user_id.isna()].sample(50, random_state=1)])
    ent = sample[["user_id", "anonymous_id", "product_id", "session_id", "event_timestamp"]].reset_index(drop=True)
    got = historical_features(fs, ent)
    for entity in ("user", "visitor", "product"):
        for f in features_of(entity, "state"):
            feast = got[f.name].astype(object).where(got[f.name].notna(), f.default).to_numpy()
            ours = sample[f.name].to_numpy()
            if f.dtype == "float64": np.testing.assert_allclose(ours.astype(float), feast.astype(float), rtol=1e-12, err_msg=f.name)
            else: assert list(ours) == list(feast), f.name
    assert got.user_orders_lifetime.notna().sum() > 50   # the comparison covered real values, not only defaults
    assert got.visitor_sessions_90d.notna().sum() > 20


def test_online_store_holds_exactly_the_latest_offline_values(world, store):
    out, _ = world
    fs, summary = store
    assert summary["views"]["user_features"]["rows"] > 1000 and summary["views"]["session_features"]["rows"] > 1000
    users = _read(out / "offline" / "user_features")
    latest = users.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    sessions = _read(out / "offline" / "session_features").set_index("session_id")
    end = sessions.event_timestamp.max()
    recent = sessions[sessions.event_timestamp >= end - pd.Timedelta(days=1)]
    visitors = _read(out / "offline" / "visitor_features")
    vlatest = visitors.sort_values("event_timestamp").groupby("anonymous_id").tail(1).set_index("anonymous_id")
    uids = latest.sample(100, random_state=2).index.tolist()
    sids = recent.sample(100, random_state=2).index.tolist()
    aids = vlatest.sample(100, random_state=2).index.tolist()
    got = fs.get_online_features(features=fs.get_feature_service("propensity_v1"), entity_rows=[
        {"user_id": u, "session_id": s, "anonymous_id": a, "product_id": "p000001"} for u, s, a in zip(uids, sids, aids)]).to_dict()
    for f in features_of("user", "state"):
        assert got[f.name] == latest.loc[uids, f.name].tolist(), f.name
    for f in features_of("visitor", "state"):
        assert got[f.name] == vlatest.loc[aids, f.name].tolist(), f.name
    for f in features_of("session", "state"):
        assert got[f.name] == recent.loc[sids, f.name].tolist(), f.name


def _landing(root: Path, name: str, lines: list[bytes]) -> Path:
    f = root / "events" / "dt=2024-03-04" / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"\n".join(lines) + b"\n")
    return f


def _events(n: int, session: str = "s1") -> list[bytes]:
    base = dict(event_type="product_view", anonymous_id="a1", session_id=session, product_id="p1", price=9.5, device="mobile")
    return [json.dumps({**base, "event_id": f"{session}-e{i}", "event_time": 1_709_539_200_000 + 60_000 * i}).encode()
            for i in range(n)]


def test_landing_files_the_job_cannot_read_are_named_not_dropped(tmp_path, spark):
    import gzip
    _landing(tmp_path, "part-00.jsonl", _events(3))
    gz = _landing(tmp_path, "part-01.jsonl", _events(4, "s2"))
    gz.with_name("part-01.jsonl.gz").write_bytes(gzip.compress(gz.read_bytes())); gz.unlink()
    _landing(tmp_path, "part-02.json", _events(2, "s3")); _landing(tmp_path, "_SUCCESS", [b""])
    s = run_batch(tmp_path, spark=spark, progress=False)
    assert s["source"] == "landing" and s["events"] == 3
    assert s["skipped_files"] == ["events/dt=2024-03-04/part-01.jsonl.gz", "events/dt=2024-03-04/part-02.json"]
    # a landing zone none of whose files is read is an error, not a silent switch to tables/events
    (tmp_path / "events" / "dt=2024-03-04" / "part-00.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 file\(s\) but none named \*\.jsonl \(e\.g\. dt=2024-03-04/part-01\.jsonl\.gz\)"):
        run_batch(tmp_path, spark=spark, progress=False)


def test_an_event_stamped_after_its_arrival_day_is_rejected_not_folded(tmp_path, spark):
    "One event from a clock decades ahead made the daily snapshots span to its year (the job ran out of memory)."
    ahead = json.loads(_events(1, "s9")[0]); ahead.update(event_id="s9-far", event_time=4_000_000_000_000)
    _landing(tmp_path, "part-00.jsonl", _events(3) + _events(3, "s9") + [json.dumps(ahead).encode()])
    s = run_batch(tmp_path, spark=spark, progress=False)
    assert s["events"] == 6 and s["rejected_records"] == 1
    rejected = [json.loads(l) for f in (tmp_path / "rejected" / "batch").glob("*.json") for l in f.read_text().splitlines()]
    assert [r["reason"] for r in rejected] == ["event_time=4000000000000: 2,290,403,200 s after the landing zone's last "
                                               "arrival day ended; expected at most 120 s ahead of arrival (a clock running ahead)"]
    assert rejected[0]["source"].endswith("events/dt=2024-03-04/part-00.jsonl")
    dts = lambda t: sorted(p.name for p in (tmp_path / "offline" / t).glob("dt=*"))
    assert dts("sessions") == ["dt=2024-03-04"] and dts("visitor_features") == ["dt=2024-03-05"], (dts("sessions"), dts("visitor_features"))


def test_no_valid_events_stops_before_anything_is_written(tmp_path, spark):
    from propensity.batch import NoEvents
    _landing(tmp_path, "part-00.jsonl", [b"not json", b'{"event_id": "x"}'])
    with pytest.raises(NoEvents, match="no valid events in the landing input \\(2 records rejected"):
        run_batch(tmp_path, spark=spark, progress=False)
    assert not (tmp_path / "offline").exists() and not (tmp_path / "training").exists()
    assert len(list((tmp_path / "rejected" / "batch").glob("*.json"))) == 1  # the dead letters are kept


def test_batch_config_refuses_values_that_make_no_sessions():
    for kw, says in ((dict(inactivity_minutes=-1), "inactivity_minutes=-1: expected a number > 0"),
                     (dict(grace_minutes=-5), "grace_minutes=-5: expected a number >= 0"),
                     (dict(inactivity_minutes=float("nan")), "inactivity_minutes=nan"), (dict(partitions=0), "partitions=0")):
        with pytest.raises(ValueError, match=re.escape(says)):
            BatchConfig(**kw)
