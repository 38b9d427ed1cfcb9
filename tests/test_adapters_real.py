"""Adapters against the real public samples, read in place from the shared data folder.

The folder is `../shared/data` next to the repository (override with PROPENSITY_SHARED_DATA).
The samples are never copied into the repository; tests skip when they are absent.
"""
import csv
import gzip
import json
import os
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from propensity.adapters import ingest, read_otto, read_rees46, rees46_event_id
from propensity.contracts import EVENT, read_table

SHARED = Path(os.environ.get("PROPENSITY_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
REES46 = SHARED / "rees46_2019-Oct-sample.csv"
OTTO = SHARED / "otto_sample_sessions.jsonl"
GAP_MS = 30 * 60 * 1000
OCT_2019 = (pd.Timestamp("2019-10-01", tz="UTC").value // 10**6, pd.Timestamp("2019-11-01", tz="UTC").value // 10**6)


def _need(path: Path) -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} not found (set PROPENSITY_SHARED_DATA to the folder with the samples)")
    if not path.is_file():
        pytest.skip(f"sample {path.name} not found in {SHARED}")
    return path


@pytest.fixture(scope="module")
def rees46_raw() -> tuple[list[str], list[dict]]:
    "The sample's raw data lines and their parsed rows (csv module, independent of the adapter)."
    text = _need(REES46).read_text().splitlines()
    return text[1:], list(csv.DictReader(text))


@pytest.fixture(scope="module")
def otto_raw() -> list[dict]:
    return [json.loads(l) for l in _need(OTTO).read_text().splitlines() if l.strip()]


# --- REES46 ---------------------------------------------------------------------------------------

def test_rees46_every_row_accounted_for(rees46_raw):
    lines, rows = rees46_raw
    assert len(rows) == 1000
    v = read_rees46(REES46, chunksize=256)
    assert v.n_valid + v.n_rejected == len(rows)
    assert v.n_rejected == 0, v.rejected.head().to_dict("records")


def test_rees46_counts_by_type_match_raw(rees46_raw):
    _, rows = rees46_raw
    raw = Counter(r["event_type"] for r in rows)
    assert raw == {"view": 987, "cart": 3, "purchase": 10}
    got = read_rees46(REES46).valid["event_type"].value_counts().to_dict()
    mapping = {"view": "product_view", "cart": "add_to_cart", "remove_from_cart": "remove_from_cart", "purchase": "purchase"}
    assert got == {mapping[k]: n for k, n in raw.items()}


def test_rees46_values_match_raw(rees46_raw):
    lines, rows = rees46_raw
    e = read_rees46(REES46).valid
    raw = pd.DataFrame(rows)
    assert e["session_id"].nunique() == raw["user_session"].nunique() == 372
    assert e["user_id"].tolist() == raw["user_id"].tolist()
    assert (e["anonymous_id"] == "rees46:" + raw["user_id"]).all()
    assert e["session_id"].tolist() == raw["user_session"].tolist()
    assert e["product_id"].tolist() == raw["product_id"].tolist()
    assert e["price"].tolist() == raw["price"].astype(float).tolist()
    expected_cat = raw["category_code"].where(raw["category_code"] != "", "category_id:" + raw["category_id"])
    assert e["category"].tolist() == expected_cat.tolist()
    assert e["category"].str.startswith("category_id:").sum() == (raw["category_code"] == "").sum() > 0
    assert e["brand"].isna().sum() == (raw["brand"] == "").sum() > 0
    times = pd.to_datetime(raw["event_time"].str.removesuffix(" UTC"), utc=True)
    assert e["event_time"].tolist() == (times.astype("int64") // 10**6).tolist()
    assert e["event_time"].between(*OCT_2019, inclusive="left").all()
    unit = e["event_type"].isin(["add_to_cart", "purchase"])
    assert (e.loc[unit, "quantity"] == 1).all() and e.loc[~unit, "quantity"].isna().all()
    assert e[["device", "country", "traffic_source"]].isna().all().all()


def test_rees46_event_ids_hash_the_raw_lines(rees46_raw, tmp_path):
    lines, _ = rees46_raw
    e = read_rees46(REES46).valid
    assert e["event_id"].tolist() == [rees46_event_id(l) for l in lines]
    assert e["event_id"].nunique() == len(set(lines))
    # same ids from a gzip copy (in a temp dir) and with every line delivered twice
    gz = tmp_path / "dup.csv.gz"
    header = REES46.read_text().splitlines()[0]
    gz.write_bytes(gzip.compress(("\n".join([header, *lines, *lines]) + "\n").encode()))
    d = read_rees46(gz, chunksize=300).valid
    assert len(d) == 2 * len(lines)
    assert d["event_id"].tolist() == e["event_id"].tolist() * 2


# --- OTTO -----------------------------------------------------------------------------------------

def _sessions_by_rule(events: list[dict]) -> int:
    ts = sorted(ev["ts"] * (1000 if ev["ts"] < 1e11 else 1) for ev in events)
    return 1 + sum(b - a > GAP_MS for a, b in zip(ts, ts[1:]))


def test_otto_every_event_accounted_for(otto_raw):
    assert len(otto_raw) == 20
    n_events = sum(len(o["events"]) for o in otto_raw)
    raw = Counter(ev["type"] for o in otto_raw for ev in o["events"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = read_otto(OTTO)  # no prices: the contract rejects carts and orders, with its reason
    assert v.n_valid + v.n_rejected == n_events
    assert v.n_valid == raw["clicks"] and v.n_rejected == raw["carts"] + raw["orders"]
    assert set(v.rejected["reason"]) == {"price: missing, expected for event_type=add_to_cart",
                                         "price: missing, expected for event_type=purchase"}
    assert v.rejected["source"].str.startswith(f"{OTTO}:").all()
    v = read_otto(OTTO, unknown_price=0.0)
    assert (v.n_valid, v.n_rejected) == (n_events, 0)
    assert v.valid["event_type"].value_counts().to_dict() == {
        "product_view": raw["clicks"], "add_to_cart": raw["carts"], "purchase": raw["orders"]}
    assert set(v.valid["event_id"]) == {f"otto:{o['session']}:{i}" for o in otto_raw for i in range(len(o["events"]))}
    assert v.valid["user_id"].isna().all()


def test_otto_sessions_follow_the_30_minute_rule(otto_raw):
    e = read_otto(OTTO, unknown_price=0.0).valid
    per_shopper = e.groupby("anonymous_id")["session_id"].nunique()
    expected = {f"otto:{o['session']}": _sessions_by_rule(o["events"]) for o in otto_raw}
    assert per_shopper.to_dict() == expected
    assert per_shopper.max() > 1  # at least one OTTO "session" is split
    gaps = e.sort_values("event_time").groupby("session_id")["event_time"].diff()
    assert gaps.max() <= GAP_MS  # no gap of more than 30 minutes inside a session
    # consecutive sessions of a shopper are more than 30 minutes apart, numbered in time order
    spans = e.groupby(["anonymous_id", "session_id"])["event_time"].agg(["min", "max"]).reset_index()
    spans["k"] = spans["session_id"].str.rsplit(":", n=1).str[1].astype(int)
    for _, s in spans.sort_values(["anonymous_id", "k"]).groupby("anonymous_id"):
        assert s["k"].tolist() == list(range(len(s)))
        assert (s["min"].iloc[1:].to_numpy() - s["max"].iloc[:-1].to_numpy() > GAP_MS).all()
        assert s["min"].is_monotonic_increasing


# --- ingest round trip ----------------------------------------------------------------------------

def test_ingest_round_trip(tmp_path):
    _need(REES46), _need(OTTO)
    s = ingest("rees46", REES46, tmp_path)
    assert (s["n_valid"], s["n_rejected"], s["n_sessions"], s["n_users"]) == (1000, 0, 372, 330)
    assert (s["first_event_utc"], s["last_event_utc"]) == ("2019-10-01T00:00:00+00:00", "2019-10-01T00:17:26+00:00")
    back = read_table(tmp_path / "tables" / "events", EVENT)
    assert sorted(back["event_id"]) == sorted(read_rees46(REES46).valid["event_id"])
    assert list(back.columns) == EVENT.columns
    o = ingest("otto", OTTO, tmp_path, unknown_price=0.0)
    assert (o["n_valid"], o["n_rejected"], o["n_users"], o["n_anonymous_ids"]) == (862, 0, 0, 20)
    back = read_table(tmp_path / "tables" / "events", EVENT)
    assert len(back) == 1862
    assert back["session_id"].nunique() == 372 + o["n_sessions"]
    with pytest.raises(FileExistsError):
        ingest("otto", OTTO, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = ingest("otto", OTTO, tmp_path, overwrite=True)  # no prices this time: carts and orders rejected
    assert (o["n_valid"], o["n_rejected"], o["rejected_by_field"]) == (800, 62, {"price": 62})
    assert len(read_table(tmp_path / "tables" / "events", EVENT)) == 1800
    dead = [json.loads(l) for l in (tmp_path / "rejected" / "otto.jsonl").read_text().splitlines()]
    assert len(dead) == 62 and all(d["source"].startswith(f"{OTTO}:") for d in dead)
