"""The scoring service end to end on real parts: a short simulated world (Spark batch job), a small trained and
promoted model, Feast materialization into a private Valkey server, the service as a real uvicorn process, the
SageMaker `serve` program as a real remote endpoint. Parity with Feast's reader, hot reload under traffic, an
online-store outage (server stopped and restarted mid-load), auth, validation, the collector, and a schemathesis
run against the published OpenAPI schema."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import copy_world

from propensity.config import Settings
from propensity.contracts import read_table
from propensity.feast_repo import feature_store, materialize
from propensity.features import ENTITIES, features_of
from propensity.livestream import dead_letter_key, read_after, stream_length
from propensity.onlinestore import EmbeddedValkey, _free_port, redis_client
from propensity.registry import list_versions, load, promote, register
from propensity.scorer import FeatureReader, ModelBundle, RespClient, Scorer, model_source, policy_source
from propensity.train import TrainConfig, train_pipeline

BIN = Path(sys.executable).parent
SERVE = Path(__file__).resolve().parents[1] / "serving" / "sagemaker" / "serve"
POLICY = Path(__file__).resolve().parents[1] / "serving" / "policy.toml"
PROJECT = "servingtest"
KEY = "test-key-0123456789"
CFG = TrainConfig(val_days=2, test_days=2, n_trials=2, timeout_s=60, max_rounds=200, early_stopping=20)


@pytest.fixture(scope="module")
def world(tmp_path_factory, short_world):
    "A copy of the short world with a promoted model, materialized into a private Valkey on a fixed port."
    d = copy_world(short_world, tmp_path_factory.mktemp("serving") / "w")
    s = train_pipeline(d, CFG, gates=dict(ece_max=1.0, segment_ece_max=1.0, pr_auc_tolerance=1.0))
    assert s["version"] == "v0001" and s["promoted"]
    vdir, port = tmp_path_factory.mktemp("serving-valkey"), _free_port()
    server = EmbeddedValkey(vdir, port=port).start()
    settings = Settings(data_dir=d, redis_url=server.url, feast_project=PROJECT, stream_key="servingtest:events")
    materialize(settings, d, verbose=False)
    box = {"server": server}
    try:
        yield dict(d=d, settings=settings, url=server.url, port=port, vdir=vdir, box=box)
    finally:
        box["server"].stop()


def ids_sample(d: Path, n: int = 40) -> list[dict]:
    "Entity ids of recent scoring points: sessions, their users (some anonymous) and products, plus unknown ones."
    tr = read_table(d / "training" / "training_set").sort_values("event_timestamp").tail(3000)
    rows = tr.sample(n, random_state=1)
    out = [{"user_id": u if isinstance(u, str) else None, "anonymous_id": a, "session_id": s, "product_id": p if isinstance(p, str) else None}
           for u, a, s, p in zip(rows["user_id"], rows["anonymous_id"], rows["session_id"], rows["product_id"])]
    return out + [{"user_id": "nobody", "anonymous_id": "never-seen", "session_id": "never-seen", "product_id": "nothing"}]


def test_reader_equals_feast_get_online_features(world):
    settings, d = world["settings"], world["d"]
    store = feature_store(settings, d)
    r = redis_client(world["url"])
    reader = FeatureReader(PROJECT)
    rows = ids_sample(d)
    ent_rows = [{k: (v if v is not None else "") for k, v in row.items()} for row in rows]
    got = store.get_online_features(features=store.get_feature_service("propensity_v1"), entity_rows=ent_rows).to_dict()
    found = {e: 0 for e in ENTITIES}
    for n, row in enumerate(ent_rows):
        feats, missing, times = reader.decode([r.hmget(*c) if c else None for c in reader.commands(row)], fill=False)
        for f in features_of(when="state"):
            assert feats[f.name] == got[f.name][n] and type(feats[f.name]) is type(got[f.name][n]), (f.name, n)
        for e in ENTITIES:
            found[e] += e not in missing
            assert (e in missing) == all(got[f.name][n] is None for f in features_of(e, "state"))
    assert all(0 < v < len(rows) for v in found.values()), found   # both present and missing entities were compared
    # filled: the spec's defaults for the unknown entities, and they are flagged
    feats, missing, _ = reader.fetch(r, rows[-1])
    assert missing == ["user", "visitor", "session", "product"] and feats["user_days_since_last_order"] == 999.0 and feats["sess_device"] == "unknown"


def test_in_process_score_equals_booster_predict_on_a_dataframe(world):
    "The scorer's fast path gives the baseline's number (Booster.predict on the encoded frame) and calibration."
    d, r = world["d"], redis_client(world["url"])
    sc = Scorer(PROJECT, model_source(d / "registry"))
    rc = RespClient(world["url"])
    mb = sc.models.current
    at = int(pd.Timestamp("2024-03-11T12:00:00Z").value // 1_000_000)
    for row in ids_sample(d, 25):
        req = {**row, "anonymous_id": "a", "at_ms": at}
        a = sc.score(r, req)
        values = sc.values(req, [r.hmget(*c) if c else None for c in sc.plan(req)])
        X = mb.encoder.transform(pd.DataFrame([values]))
        raw = float(mb.model.booster.predict(X)[0])
        assert abs(a["raw_score"] - raw) < 1e-9
        seg = pd.DataFrame({c: [values[f]] for c, f in (("device", "sess_device"), ("country", "sess_country"), ("traffic_source", "sess_traffic_source"))})
        assert abs(a["probability"] - mb.calibrated.calibrate(np.array([raw]), seg)[0]) < 1e-9
        assert a["degraded"] is False and a["model_version"] == "v0001"
        b = sc.score(rc, req)                                   # the lean client gives the same answer
        assert {k: v for k, v in b.items() if k != "scored_at_ms"} == {k: v for k, v in a.items() if k != "scored_at_ms"}


# ---------------------------------------------------------------------------- the HTTP service
class Service:
    "`propensity serve` as a subprocess on a free port."
    def __init__(self, world, **env):
        self.port = _free_port()
        e = {**os.environ, "REDIS_URL": world["url"], "PROPENSITY_FEAST_PROJECT": PROJECT, "PROPENSITY_API_KEYS": KEY,
             "PROPENSITY_STREAM": world["settings"].stream_key, "PROPENSITY_RELOAD_S": "0.2", **env}
        self.log = world["d"].parent / f"serve-{self.port}.log"
        with open(self.log, "w") as out:  # a file, not a pipe: nothing can block on a full pipe or wait for its end
            self.proc = subprocess.Popen([str(BIN / "propensity"), "serve", "--data", str(world["d"]), "--port", str(self.port)],
                                         env=e, stdout=out, stderr=subprocess.STDOUT, text=True)
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.base, headers={"X-API-Key": KEY}, timeout=10)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None: raise RuntimeError(f"serve exited: {self.log.read_text()[-3000:]}")
            try:
                if self.client.get("/healthz").status_code == 200: break
            except httpx.TransportError: pass
            if time.monotonic() > deadline: raise RuntimeError("serve did not start")
            time.sleep(0.1)

    def stop(self):
        self.client.close()
        self.proc.terminate()
        try: self.proc.wait(15)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        return self.log.read_text()


@pytest.fixture(scope="module")
def service(world):
    s = Service(world)
    yield s
    log = s.stop()
    assert "never-seen" not in log and "nobody" not in log  # no ids in the service's output


def req(row, **kw):
    return {k: v for k, v in {**row, **kw}.items() if v is not None}  # ids_sample's rows carry their browser


def test_score_returns_the_in_process_answer_with_band_action_and_contributions(world, service):
    rows = ids_sample(world["d"], 10)
    at = int(pd.Timestamp("2024-03-11T12:00:00Z").value // 1_000_000)
    sc = Scorer(PROJECT, model_source(world["d"] / "registry"), policy_source(POLICY))   # the service's policy file
    r = redis_client(world["url"])
    for row in rows:
        a = service.client.post("/v1/score", json=req(row, at_ms=at)).json()
        b = sc.score(r, {**row, "at_ms": at})
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-12) and a["band"] == b["band"]
        assert a["model_version"] == "v0001" and a["degraded"] is False and a["action"] == b["action"]
    unknown = service.client.post("/v1/score", json=req(rows[-1], at_ms=at)).json()
    assert unknown["missing"] == ["user", "visitor", "session", "product"] and unknown["feature_age_s"] is None and not unknown["degraded"]
    e = service.client.post("/v1/score", json=req(rows[0], at_ms=at, explain=True)).json()
    assert len(e["contributions"]) == 6 and e["contributions"][-1]["feature"] == "_bias"
    # the request's own event is a request-time feature: it reaches the model as the backfill gives it
    for ev in ("add_to_cart", "cart_view"):
        a = service.client.post("/v1/score", json=req(rows[0], at_ms=at, event_type=ev)).json()
        q = {**rows[0], "at_ms": at, "event_type": ev}
        assert a["probability"] == pytest.approx(sc.score(r, q)["probability"], abs=1e-12)
        assert sc.values(q, [r.hmget(*c) if c else None for c in sc.plan(q)])["sess_request_event"] == ev
    logit = np.log(e["raw_score"] / (1 - e["raw_score"]))
    assert abs(sum(c["contribution"] for c in e["contributions"])) <= abs(logit) + sum(abs(c["contribution"]) for c in e["contributions"])
    batch = service.client.post("/v1/score/batch", json={"requests": [req(x, at_ms=at) for x in rows[:5]]}).json()["results"]
    singles = [service.client.post("/v1/score", json=req(x, at_ms=at)).json() for x in rows[:5]]
    assert [x["probability"] for x in batch] == [x["probability"] for x in singles]


def test_auth_is_required_on_score_and_events_but_not_on_health(service):
    body = {"anonymous_id": "a", "session_id": "s"}
    for path, payload in (("/v1/score", body), ("/v1/score/batch", {"requests": [body]}), ("/v1/events", {"events": [{}]})):
        assert httpx.post(service.base + path, json=payload).status_code == 401
        assert httpx.post(service.base + path, json=payload, headers={"X-API-Key": KEY[:-1] + "x"}).status_code == 401
        assert httpx.post(service.base + path, json=payload, headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(service.base + "/healthz").status_code == 200
    assert httpx.get(service.base + "/readyz").json()["ready"] is True


def test_bad_input_is_a_422_naming_the_field(service):
    r = service.client.post("/v1/score", json={"anonymous_id": "a"})
    assert r.status_code == 422 and r.json()["errors"] == ["body.session_id: Field required"]
    r = service.client.post("/v1/score", json={"anonymous_id": "a", "session_id": "s", "explian": True})
    assert r.status_code == 422 and any("explian" in e for e in r.json()["errors"])
    r = service.client.post("/v1/score/batch", json={"requests": []})
    assert r.status_code == 422 and "body.requests" in r.json()["errors"][0]
    r = service.client.post("/v1/score", json={"session_id": "s", "anonymous_id": "a", "event_type": "click"})
    assert r.status_code == 422 and any("body.event_type" in e for e in r.json()["errors"])


def test_collector_appends_valid_events_and_dead_letters_the_rest(world, service):
    r = redis_client(world["url"])
    stream = world["settings"].stream_key
    before, dead_before = stream_length(r, stream), stream_length(r, dead_letter_key(stream))
    ev = {"event_id": "e-1", "event_type": "add_to_cart", "event_time": 1710158400000, "anonymous_id": "a1",
          "session_id": "s1", "product_id": "p1", "price": 19.9, "quantity": 1, "device": "mobile"}
    events = [ev, {**ev, "event_id": "e-2", "price": None}, {**ev, "event_id": "e-3", "event_type": "product_view"},
              {**ev, "event_id": "e-4", "device": "fridge"},
              {**ev, "event_id": 10**20}, {**ev, "event_id": "e-6", "quantity": 2**64}]  # JSON integers past 64 bits
    r_ = service.client.post("/v1/events", json={"events": events}).json()
    assert r_["accepted"] == 2 and [x["index"] for x in r_["rejected"]] == [1, 3, 4, 5], r_
    assert "price: missing" in r_["rejected"][0]["reason"] and "device='fridge'" in r_["rejected"][1]["reason"]
    assert r_["rejected"][2]["reason"].startswith("event_id=100000000000000000000: expected a string")
    assert r_["rejected"][3]["reason"].startswith("quantity=18446744073709551616: expected an integer")
    assert stream_length(r, stream) == before + 2 and stream_length(r, dead_letter_key(stream)) == dead_before + 4
    lines = [json.loads(x) for _, x in read_after(r, stream)][-2:]
    assert [x["event_id"] for x in lines] == ["e-1", "e-3"] and lines[0] == ev   # the original JSON, as sent
    dead = [json.loads(x) for _, x in read_after(r, dead_letter_key(stream))][-4:]
    assert dead[0]["record"]["event_id"] == "e-2" and "price" in dead[0]["reason"]
    assert dead[2]["record"]["event_id"] == 10**20 and dead[3]["record"]["quantity"] == 2**64  # kept exactly

    # items that are not objects are rejected and dead-lettered one by one; the batch's valid events go through
    before, dead_before = stream_length(r, stream), stream_length(r, dead_letter_key(stream))
    r_ = service.client.post("/v1/events", json={"events": [{**ev, "event_id": "e-7"}, "garbage", None, [1]]})
    assert r_.status_code == 200 and r_.json()["accepted"] == 1, r_.text
    assert [x["reason"] for x in r_.json()["rejected"]] == [f"record: expected a JSON object, got {t}" for t in ("str", "NoneType", "list")]
    assert stream_length(r, stream) == before + 1 and stream_length(r, dead_letter_key(stream)) == dead_before + 3
    assert [json.loads(x)["record"] for _, x in read_after(r, dead_letter_key(stream))][-3:] == ["garbage", None, [1]]
    # NaN is not JSON: the body is refused with where it is, nothing is written (Python's parser took it, and the
    # stream held null where the client sent NaN); so is a body that is not UTF-8
    nan = json.dumps({"events": [{**ev, "event_id": "e-8", "price": float("nan")}]}).encode()
    for body, says in ((nan, "NaN is not JSON"), (json.dumps({"events": [ev]}).encode().replace(b"a1", b"\xe9"), "not valid UTF-8 (byte 0xe9")):
        r_ = service.client.post("/v1/events", content=body, headers={"content-type": "application/json"})
        assert r_.status_code == 422 and says in r_.json()["errors"][0], r_.text
    assert stream_length(r, stream) == before + 1 and stream_length(r, dead_letter_key(stream)) == dead_before + 3
    # an event stamped an hour after it arrived (a clock running ahead) would move the stream job's watermark: rejected
    now = int(time.time() * 1000)
    r_ = service.client.post("/v1/events", json={"events": [{**ev, "event_id": "e-now", "event_time": now},
                                                            {**ev, "event_id": "e-ahead", "event_time": now + 3_600_000}]}).json()
    assert r_["accepted"] == 1 and [x["index"] for x in r_["rejected"]] == [1], r_
    assert re.match(r"event_time=\d+: 3,60\d s after the event arrived; expected at most 120 s ahead", r_["rejected"][0]["reason"]), r_


def test_bodies_over_the_route_limit_are_413_before_they_are_read(service):
    huge = b'{"events": [{"page": "' + b"x" * (5 << 20) + b'"}]}'
    r = service.client.post("/v1/events", content=huge)
    assert r.status_code == 413 and r.json()["detail"] == "request body over 4,194,304 bytes, the limit of /v1/events"
    r = service.client.post("/v1/score", content=iter([b'{"anonymous_id": "a", "session_id": "', b"s" * (70 << 10), b'"}']))  # chunked
    assert r.status_code == 413
    assert service.client.post("/v1/score", json={"anonymous_id": "a", "session_id": "s"}).status_code == 200  # still serving


def test_metrics_count_latency_by_route_and_degraded_by_reason(service):
    service.client.post("/v1/score", json={"anonymous_id": "a", "session_id": "metrics-check"})
    m = service.client.get("/metrics").text
    count = [l for l in m.splitlines() if l.startswith('propensity_http_request_seconds_count{route="/v1/score"}')]
    assert count and float(count[0].split()[-1]) >= 1
    assert 'propensity_model_info{version="v0001"} 1.0' in m and "propensity_events_total" in m


def _hammer(client, stop, out, body):
    while not stop.is_set():
        t = time.perf_counter()
        try:
            r = client.post("/v1/score", json=body)
            out.append((r.status_code, r.json(), time.perf_counter() - t))
        except httpx.HTTPError as e:
            out.append((599, {"error": repr(e)}, time.perf_counter() - t))


def all_high_version(registry: Path) -> str:
    "Register a new version in `registry`: the promoted model with every session in the high band."
    m = load(registry)
    return register(registry, booster_text=m.booster.model_to_string(), feature_names=m.feature_names, spec_hash=m.spec_hash,
                    calibration=m.calibration, training_window={}, metrics=m.metrics, gates={"passed": True},
                    bands={**m.bands, "thresholds": {"high": 0.0, "medium": 0.0, "low": 0.0}}, lineage={}, params={})


def test_hot_reload_under_traffic(world, service):
    d = world["d"]
    row = ids_sample(d, 3)[0]
    body = req(row, at_ms=int(pd.Timestamp("2024-03-11T12:00:00Z").value // 1_000_000))
    stop, out = threading.Event(), []
    clients = [httpx.Client(base_url=service.base, headers={"X-API-Key": KEY}, timeout=10) for _ in range(2)]
    threads = [threading.Thread(target=_hammer, args=(c, stop, out, body)) for c in clients]
    for t in threads: t.start()
    time.sleep(1.0)
    v2 = all_high_version(d / "registry")
    n_at_promote = len(out)
    promote(d / "registry", v2)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (out and out[-1][1].get("model_version") == v2): time.sleep(0.05)
    time.sleep(0.5)
    stop.set()
    for t in threads: t.join()
    for c in clients: c.close()
    promote(d / "registry", "v0001")                      # the rest of the module serves v0001 again
    assert len(out) > 50 and all(s == 200 for s, _, _ in out)  # nothing failed while the model was swapped
    versions = [a["model_version"] for _, a, _ in out]
    first_v2 = versions.index(v2)
    assert first_v2 >= n_at_promote and set(versions[:first_v2]) == {"v0001"}
    assert set(versions[first_v2 + 10:]) == {v2}           # (the two client threads may interleave at the switch)
    assert all(a["band"] == "high" for _, a, _ in out[first_v2 + 10:])
    assert max(t for _, _, t in out) < 1.0                  # no request waited for the load
    deadline = time.monotonic() + 15
    while service.client.post("/v1/score", json=body).json()["model_version"] != "v0001" and time.monotonic() < deadline: time.sleep(0.1)


def test_policy_file_changes_are_applied_and_bad_ones_refused(world, tmp_path):
    pol = tmp_path / "policy.toml"
    text = (Path(__file__).resolve().parents[1] / "serving" / "policy.toml").read_text()
    pol.write_text(text.replace("# high = 0.30", "high = 0.0").replace("# medium = 0.08", "medium = 0.0"))
    s = Service(world, PROPENSITY_POLICY=str(pol))
    try:
        body = {"anonymous_id": "a", "session_id": "policy-check"}
        a = s.client.post("/v1/score", json=body).json()
        assert a["band"] == "high" and a["action"]["action"] == "no_incentive"
        pol.write_text(text.replace("# high = 0.30", "high = 1.0").replace("# medium = 0.08", "medium = 0.0"))
        deadline = time.monotonic() + 10
        while s.client.post("/v1/score", json=body).json()["band"] != "medium" and time.monotonic() < deadline: time.sleep(0.1)
        a = s.client.post("/v1/score", json=body).json()
        assert a["band"] == "medium" and a["action"] == {"action": "incentive", "incentive": "10_percent_off", "upsell_slots": 0}
        pol.write_text(text.replace('action = "incentive"', 'action = "discount"'))  # invalid: the previous policy stays
        deadline = time.monotonic() + 10
        while not s.client.get("/readyz").json()["policy_error"] and time.monotonic() < deadline: time.sleep(0.1)
        assert "bands.medium.action='discount'" in s.client.get("/readyz").json()["policy_error"]
        assert s.client.post("/v1/score", json=body).json()["action"]["action"] == "incentive"
    finally:
        s.stop()


def test_online_store_outage_gives_degraded_answers_then_recovers(world, service):
    row = ids_sample(world["d"], 3)[0]
    body = req(row, device="desktop", at_ms=int(pd.Timestamp("2024-03-11T12:00:00Z").value // 1_000_000))
    healthy = service.client.post("/v1/score", json=body).json()
    assert not healthy["degraded"]
    stop, out = threading.Event(), []
    c = httpx.Client(base_url=service.base, headers={"X-API-Key": KEY}, timeout=10)
    th = threading.Thread(target=_hammer, args=(c, stop, out, body)); th.start()
    time.sleep(0.5)
    world["box"]["server"].stop()                               # the online store goes away mid-load
    t_down = len(out)
    time.sleep(2.0)
    t_up = len(out)
    world["box"]["server"] = EmbeddedValkey(world["vdir"], port=world["port"]).start()   # and comes back (its data saved)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (out and not out[-1][1].get("degraded")): time.sleep(0.05)
    time.sleep(0.3)
    stop.set(); th.join(); c.close()
    assert all(s == 200 for s, _, _ in out)                     # never a 5xx
    during = [a for _, a, _ in out[t_down + 5:t_up]]
    assert during and all(a["degraded"] for a in during)
    reasons = {a["degraded_reason"] for a in during}
    assert reasons <= {"online_store_unavailable", "online_store_timeout", "online_store_circuit_open"} and "online_store_circuit_open" in reasons
    assert all(a["raw_score"] is None and a["action"]["action"] == "none" for a in during)
    assert max(t for _, _, t in out[t_down:t_up]) < 1.0         # within the latency budget: no hanging on a dead store
    after = out[-1][1]
    assert not after["degraded"] and after["probability"] == pytest.approx(healthy["probability"], abs=1e-12)   # recovered by itself
    m = service.client.get("/metrics").text
    assert 'propensity_degraded_total{reason="online_store_circuit_open"}' in m


def test_a_restarted_store_is_picked_up_by_the_next_request(world, service):
    "Connections the service kept from before a restart are stale: the first request after it is answered, not degraded."
    import asyncio
    row = ids_sample(world["d"], 3)[0]
    body = req(row, at_ms=int(pd.Timestamp("2024-03-11T12:00:00Z").value // 1_000_000))
    async def burst():  # 32 requests at once: the service opens that many connections and keeps up to 16 of them
        async with httpx.AsyncClient(base_url=service.base, headers={"X-API-Key": KEY}, timeout=10) as c:
            return await asyncio.gather(*[c.post("/v1/score", json=body) for _ in range(32)])
    assert not any(r.json()["degraded"] for r in asyncio.run(burst()))
    world["box"]["server"].stop()                               # no traffic while the store restarts
    world["box"]["server"] = EmbeddedValkey(world["vdir"], port=world["port"]).start()
    assert redis_client(world["url"]).ping()
    after = [service.client.post("/v1/score", json=body).json() for _ in range(5)]
    assert [a["degraded_reason"] for a in after] == [None] * 5  # before 2026-11-29: each stale connection failed one request


def test_collector_fails_fast_while_the_store_hangs_then_recovers(world, service):
    ev = {"event_id": "e-hang", "event_type": "page_view", "event_time": 1710158400000, "anonymous_id": "a1", "session_id": "s1"}
    pid = world["box"]["server"].pid
    os.kill(pid, signal.SIGSTOP)                                # the store hangs: it takes connections, answers nothing
    try:
        took = []
        for _ in range(5):
            t = time.perf_counter(); r = service.client.post("/v1/events", json={"events": [ev]})
            took.append((r.status_code, r.json()["reason"], time.perf_counter() - t))
    finally: os.kill(pid, signal.SIGCONT)
    assert [s for s, _, _ in took] == [503] * 5
    assert [x for _, x, _ in took[:3]] == ["online_store_timeout"] * 3     # each waited the worker's socket timeout ...
    assert [x for _, x, _ in took[3:]] == ["collector_circuit_open"] * 2 and max(t for *_, t in took[3:]) < 0.2   # ... then at once
    time.sleep(1.1)                                             # the breaker lets one request try the store again
    r = service.client.post("/v1/events", json={"events": [{**ev, "event_id": "e-back"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert 'propensity_errors_total{reason="collector_circuit_open"} 2.0' in service.client.get("/metrics").text


def test_collector_requests_waiting_while_the_store_hangs_are_answered_when_the_breaker_opens(world, service):
    "Requests that arrived together do not each wait the worker's socket timeout in turn: 3 do, then the breaker answers the rest."
    import asyncio
    ev = {"event_id": "e-wait", "event_type": "page_view", "event_time": 1710158400000, "anonymous_id": "a1", "session_id": "s1"}
    async def together(n):
        async with httpx.AsyncClient(base_url=service.base, headers={"X-API-Key": KEY}, timeout=60) as c:
            return await asyncio.gather(*[c.post("/v1/events", json={"events": [{**ev, "event_id": f"e-wait-{i}"}]}) for i in range(n)])
    pid = world["box"]["server"].pid
    os.kill(pid, signal.SIGSTOP)
    try: got = asyncio.run(together(10))
    finally: os.kill(pid, signal.SIGCONT)
    reasons = sorted(r.json()["reason"] for r in got)
    assert {r.status_code for r in got} == {503}
    assert reasons == ["collector_circuit_open"] * 7 + ["online_store_timeout"] * 3, reasons   # before 2026-11-29: 10 timeouts
    time.sleep(1.1)
    assert service.client.post("/v1/events", json={"events": [{**ev, "event_id": "e-wait-back"}]}).json()["accepted"] == 1


def test_schemathesis_finds_no_server_error(service, tmp_path):
    spec = service.client.get("/openapi.json").json()
    ops = {(p, m): op["responses"] for p, ms in spec["paths"].items() for m, op in ms.items()}
    ref = lambda rs, code: rs[code]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert ref(ops["/v1/score", "post"], "200") == "ScoreResponse" and ref(ops["/v1/score", "post"], "422") == "InvalidResponse"
    assert ref(ops["/v1/events", "post"], "200") == "EventsResponse" and ref(ops["/v1/events", "post"], "503") == "UnavailableResponse"
    assert {"401", "413", "422"} <= set(ops["/v1/score/batch", "post"]) and ref(ops["/readyz", "get"], "503") == "ReadyResponse"
    # every check but positive_data_acceptance (the service is strict: 2.0 is not an integer timestamp, as JSON Schema allows),
    # response_schema_conformance among them: the documented bodies are the ones sent
    r = subprocess.run([str(BIN / "schemathesis"), "run", f"{service.base}/openapi.json", "--checks", "all",
                        "--exclude-checks", "positive_data_acceptance",
                        "--max-examples", "15", "--seed", "7", "-H", f"X-API-Key: {KEY}", "--no-color"],
                       capture_output=True, text=True, timeout=240, cwd=tmp_path)   # its .schemathesis/ cache stays out of the repo
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "Tested: 6" in r.stdout and "No issues found" in r.stdout   # all six operations, hundreds of generated cases
    assert int(re.search(r"(\d+) generated", r.stdout).group(1)) > 100


def test_demo_on_a_port_in_use_stops_with_a_message(world):
    "Before 2026-11-29 the demo went on and talked to whatever answered on the port as if it were its own service."
    import socket
    env = {**os.environ, "REDIS_URL": world["url"], "PROPENSITY_FEAST_PROJECT": PROJECT}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0)); taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([str(BIN / "propensity"), "serve", "--demo", "--data", str(world["d"]), "--port", str(port), "--seconds", "1"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 2 and f"--port={port}: the demo's service cannot listen on 127.0.0.1:{port} (in use?)" in r.stderr, r.stderr[-2000:]
    assert "replayed" not in r.stdout


# ---------------------------------------------------------------------------- SageMaker contract
def start_endpoint(root: Path) -> tuple[subprocess.Popen, str]:
    "The SageMaker `serve` program on the model folder `root/model`, answering /ping: (process, base URL)."
    port = _free_port()
    env = {**os.environ, "PROPENSITY_SM_ROOT": str(root), "SAGEMAKER_BIND_TO_PORT": str(port), "PROPENSITY_SM_HOST": "127.0.0.1"}
    log = root / "sm.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(SERVE)], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    ep = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(ep + "/ping").status_code == 200: return proc, ep
        except httpx.TransportError: pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill(); raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.1)


def test_sagemaker_serve_is_the_remote_endpoint_of_the_scoring_api(world, tmp_path):
    root = tmp_path / "ml"
    shutil.copytree(world["d"] / "registry", root / "model")   # what SageMaker unpacks from model.tar.gz
    proc, ep = start_endpoint(root)
    try:
        assert os.access(SERVE, os.X_OK) and httpx.get(ep + "/ping").json()["model_version"] == "v0001"
        mb = ModelBundle.load(world["d"] / "registry")
        tr = read_table(world["d"] / "training" / "training_set").tail(20)
        names = mb.encoder.features
        rows = [{n: (v.item() if hasattr(v, "item") else v) for n, v in rec.items()} for rec in tr[names].to_dict("records")]
        want = [mb.score(x)[1] for x in rows]
        js = httpx.post(ep + "/invocations", json={"instances": rows}).json()
        assert [p["probability"] for p in js["predictions"]] == pytest.approx(want, abs=1e-12)
        csv = tr[names].to_csv(index=False).encode()
        got = httpx.post(ep + "/invocations", content=csv, headers={"content-type": "text/csv", "accept": "text/csv"}).text.split()
        assert [float(x) for x in got] == pytest.approx(want, abs=1e-9)
        bad = httpx.post(ep + "/invocations", json={"instances": [{**rows[0], "sess_events": "many"}]})
        assert bad.status_code == 400 and "row 0: sess_events='many'" in bad.json()["error"]

        # the scoring API with the endpoint instead of its in-process model: the same answers
        s = Service(world, PROPENSITY_MODEL_ENDPOINT=ep)
        try:
            at = int(pd.Timestamp("2024-03-11T12:00:00Z").value // 1_000_000)
            sc = Scorer(PROJECT, model_source(world["d"] / "registry"))
            r = redis_client(world["url"])
            for row in ids_sample(world["d"], 5):
                a = s.client.post("/v1/score", json=req(row, at_ms=at)).json()
                assert not a["degraded"] and a["probability"] == pytest.approx(sc.score(r, {**row, "at_ms": at})["probability"], abs=1e-12)
            # the local registry promotes a version (every session high) the endpoint does not serve: the answers
            # describe the model that scored, v0001 (before 2026-11-29: the local version and its bands, no contributions)
            promote(world["d"] / "registry", all_high_version(world["d"] / "registry"))
            try:
                deadline = time.monotonic() + 15
                while s.client.get("/readyz").json()["model_version"] == "v0001" and time.monotonic() < deadline: time.sleep(0.1)
                for row in ids_sample(world["d"], 5):
                    a = s.client.post("/v1/score", json=req(row, at_ms=at, explain=True)).json()
                    want = sc.score(r, {**row, "at_ms": at, "explain": True})
                    assert (a["model_version"], a["band"], a["degraded"]) == ("v0001", want["band"], False)
                    assert [c["feature"] for c in a["contributions"]] == [c["feature"] for c in want["contributions"]]
                assert s.client.get("/readyz").json()["model_endpoint_version"] == "v0001"
            finally: promote(world["d"] / "registry", "v0001")
            proc.terminate(); proc.wait(10)                        # the endpoint goes away: degraded, not an error
            a = s.client.post("/v1/score", json=req(row, at_ms=at))
            assert a.status_code == 200 and a.json()["degraded_reason"] == "model_endpoint_unavailable"
        finally:
            s.stop()
        # an endpoint serving a version the local registry does not hold: degraded, the version named in /readyz
        local = set(list_versions(world["d"] / "registry").version)
        while (v := all_high_version(root / "model")) in local: pass
        promote(root / "model", v)
        proc, ep = start_endpoint(root)
        s = Service(world, PROPENSITY_MODEL_ENDPOINT=ep)
        try:
            a = s.client.post("/v1/score", json=req(row, at_ms=at)).json()
            assert a["degraded_reason"] == "model_endpoint_version_unknown" and a["model_version"] == "v0001"
            assert s.client.get("/readyz").json()["model_endpoint_version"] == v
            assert f"the model endpoint scores with {v}, which the local registry" in s.stop()
        finally:
            if s.proc.poll() is None: s.stop()
    finally:
        if proc.poll() is None: proc.terminate(); proc.wait(10)
