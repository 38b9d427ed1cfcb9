"""The Spark fast path of the event contract decides exactly like `EVENT.validate`: same valid rows with the same
typed values, same rejections with the same reasons, on tricky records and on a simulated landing zone; and the batch
job, which settles the lines the JVM cannot certify inside its session pass, keeps and rejects the same lines."""
import json

import orjson
import pandas as pd

from propensity.batch import pass_input, read_events, run_batch
from propensity.contracts import EVENT, read_jsonl
from propensity.simulate import simulate

GOOD = dict(event_id="e0", event_type="add_to_cart", event_time=1_709_539_200_000, user_id="u1", anonymous_id="a1",
            session_id="s1", product_id="p1", category="c.d", brand="acme", price=19.99, quantity=2, search_query=None,
            device="mobile", country="DE", traffic_source="paid", referrer="google.com", page="/p/p1")


def tricky() -> list[bytes]:
    "Records at the edges of the contract, one per line."
    variants = [
        {}, {"user_id": 123}, {"brand": {"a": 1}}, {"category": ["x"]}, {"device": True}, {"price": "9.99"},
        {"quantity": 1.5}, {"quantity": 2.0}, {"price": "NaN"}, {"price": -1.0}, {"price": 2e6}, {"event_time": 1_709_539_200},
        {"event_time": "2024-03-04T08:00:00"}, {"event_id": ""}, {"brand": ""}, {"referrer": ""}, {"event_type": "click"},
        {"country": "de"}, {"country": "DEU"}, {"product_id": None}, {"event_type": "search", "product_id": None},
        {"event_type": "search", "search_query": "shoes", "product_id": None, "price": None, "quantity": None},
        {"colour": "red"}, {"session_id": None}, {"anonymous_id": 7}, {"quantity": None}, {"price": 0},
        {"quantity": 0}, {"event_type": "page_view", "product_id": None, "price": None, "quantity": None},
        {"search_query": 'say "user_id": 5 loudly'}, {"price": 1e308}, {"event_time": 1.7095392e12},
        {"country": "DE\n"}, {"country": "\nDE"},
        # blank required ids are rejected; whitespace around a name, or a non-ASCII space, is kept as it came
        {"session_id": "  "}, {"anonymous_id": "\t"}, {"session_id": " s1"}, {"session_id": "\u00a0"},
        # text ceilings count characters, not bytes: 256 two-byte letters are a valid brand, 257 are not
        {"page": "/" + "x" * 2047}, {"page": "/" + "y" * 2048}, {"session_id": "s" * 129}, {"brand": "é" * 256},
        {"brand": "é" * 257},
    ]
    lines = [orjson.dumps({**GOOD, **v, "event_id": v.get("event_id", f"e{i}")}) for i, v in enumerate(variants)]
    no_key = dict(GOOD, event_id="e-nokey"); del no_key["device"]
    lines += [orjson.dumps(no_key), b'{"event_id": "e-trunc", "event_type": "add_to', b"[1, 2, 3]", b"null",
              b'{"event_id":"e-sp", "event_type" : "page_view" , "event_time":1709539200000,"anonymous_id":"a","session_id":"s"}']
    # numbers JSON can carry past what int64 and double hold (orjson cannot write them: the standard library does)
    big = [{"event_time": 2**63}, {"event_time": -(2**63) - 1}, {"quantity": 2**64}, {"quantity": 10**30},
           {"user_id": 10**20}, {"price": 10**400}]
    lines += [json.dumps({**GOOD, **v, "event_id": f"e-big{i}"}).encode() for i, v in enumerate(big)]
    # bytes that are not UTF-8 (JSON text must be): a Latin-1 byte, a truncated character, an encoded surrogate, a
    # stray byte outside the object; and valid UTF-8 beyond ASCII, which stays valid
    utf = orjson.dumps({**GOOD, "event_id": "e-utf", "brand": "Café Ünal", "search_query": "日本 🙂"})
    lines += [utf, utf.replace(b"e-utf", b"e-latin1").replace("é".encode(), b"\xe9"),
              utf.replace(b"e-utf", b"e-trunc8").replace("Ünal".encode(), b"\xc3"),
              utf.replace(b"e-utf", b"e-surr").replace("🙂".encode(), b"\xed\xa0\xbd\xed\xb8\x82"), utf.replace(b"e-utf", b"e-ff") + b"\xff"]
    return lines


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    out = df[EVENT.columns].copy()
    out["quantity"] = out["quantity"].astype("Float64")
    out["price"] = out["price"].astype("Float64")
    out["event_time"] = out["event_time"].astype("Int64")
    return out.astype(object).where(out.notna(), None).sort_values("event_id").reset_index(drop=True)


def _both(spark, folder):
    valid, rejected, source, cached = read_events(spark, folder)
    v = valid.toPandas(); r = rejected.toPandas()
    for df in cached: df.unpersist()
    return source, v, r


def _compare(spark, folder):
    source, v_spark, r_spark = _both(spark, folder)
    ref = read_jsonl(folder / "events")
    assert source == "landing"
    pd.testing.assert_frame_equal(_canon(v_spark), _canon(ref.valid))
    key = lambda r: sorted(zip(r["reason"], r["record"].map(lambda x: x[:60])))
    assert key(r_spark) == key(ref.rejected)
    return v_spark, r_spark, ref


def test_tricky_records_get_the_same_verdicts_and_reasons(tmp_path, spark):
    (tmp_path / "events" / "dt=2024-03-04").mkdir(parents=True)
    (tmp_path / "events" / "dt=2024-03-04" / "part-00.jsonl").write_bytes(b"\n".join(tricky()) + b"\n")
    v, r, ref = _compare(spark, tmp_path)
    assert 10 < len(v) and 15 < len(r)  # both outcomes are exercised
    reasons = " | ".join(r["reason"])
    for s in ("user_id=123: expected a string", "price='9.99': expected a number", "quantity=1.5: expected an integer",
              "price='NaN'", "country='de'", "country='DE\\n'", "record: not valid JSON", "record: expected a JSON object",
              "event_id='': expected a non-blank string (required)", "session_id='  ': expected a non-blank string",
              "anonymous_id='\\t': expected a non-blank", "(2,049 characters): expected a string of at most 2,048",
              "(129 characters): expected a string of at most 128", "(257 characters): expected a string of at most 256"):
        assert s in reasons, s
    got = v.set_index("event_id")
    assert got.loc["e7", "quantity"] == 2                      # an integral float is an integer
    assert got.loc["e31", "event_time"] == 1_709_539_200_000    # ... also for the time (1.7095392e12)
    assert got.loc["e36", "session_id"] == " s1" and got.loc["e37", "session_id"] == "\u00a0"
    assert len(got.loc["e38", "page"]) == 2048 and got.loc["e41", "brand"] == "é" * 256
    assert got.loc["e14", "brand"] is None                      # an empty optional string is absent
    assert "e29" in got.index                                   # a quoted "user_id": 5 inside a string is fine
    assert got.loc["e-utf", "brand"] == "Café Ünal" and got.loc["e-utf", "search_query"] == "日本 🙂"
    utf8 = r[r["reason"].str.startswith("record: not valid UTF-8")]
    assert len(utf8) == 4 and utf8["record"].str.contains("\ufffd").all(), utf8  # shown as U+FFFD in the dead letter


def test_simulated_landing_zone_gets_the_same_verdicts(tmp_path, spark):
    out = tmp_path / "w"
    simulate("small", 1, 21, out, progress=False)
    v, r, ref = _compare(spark, out)
    assert len(r) > 20 and len(v) > 40_000


def test_the_batch_job_settles_uncertain_lines_inside_its_session_pass(tmp_path, spark):
    (tmp_path / "events" / "dt=2024-03-04").mkdir(parents=True)
    (tmp_path / "events" / "dt=2024-03-04" / "part-00.jsonl").write_bytes(b"\n".join(tricky()) + b"\n")
    ref = read_jsonl(tmp_path / "events")
    events, _ = pass_input(spark, tmp_path)
    uncertain = events.filter("not _ok").count()
    assert uncertain > len(ref.rejected)  # some valid lines take the contract's slow path (e7: quantity 2.0, ...)
    s = run_batch(tmp_path, spark=spark, progress=False)
    rejected = pd.DataFrame([json.loads(x) for f in (tmp_path / "rejected" / "batch").glob("*.json")
                             for x in f.read_text().splitlines()])
    key = lambda r: sorted(zip(r["reason"], r["record"].map(lambda x: x[:60])))
    assert key(rejected) == key(ref.rejected) and s["rejected_records"] == len(ref.rejected)
    assert set(rejected["source"].map(lambda x: x.rsplit("/", 1)[-1])) == {"part-00.jsonl"}
    assert s["valid_records"] == len(ref.valid) and s["duplicates_dropped"] == 0
    sessions = pd.read_parquet(tmp_path / "offline" / "sessions")
    # every valid event is counted in its own session, the slow path's too
    expect = ref.valid.groupby("session_id").event_id.nunique()
    assert sessions.set_index("session_id").n_events.sort_index().to_dict() == expect.sort_index().to_dict()
