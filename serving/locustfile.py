"""Load test of the scoring service with a realistic mix: mostly single scores, some batch scores (a listing page
scoring its tiles), and event batches from the front end's collector.

Ids come from the world the service serves (its training set: sessions, users, products of recent scoring points,
plus unknown sessions as a live site would send), events from its landing zone. Run headless against a running
service, e.g. `propensity serve --data data/demo` with PROPENSITY_API_KEYS=<key>:

    PROPENSITY_API_KEYS=<key> PROPENSITY_LOAD_DATA=data/demo \\
      .venv/bin/locust -f serving/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8000 --only-summary

Environment: PROPENSITY_LOAD_DATA (world folder, default data/demo), PROPENSITY_API_KEYS (the first key is used).
Task weights: score 20, batch score (10 sessions) 3, events (20 events) 2.
"""
import os
import random
from pathlib import Path

import orjson
import pandas as pd
from locust import FastHttpUser, between, events, task

DATA = Path(os.environ.get("PROPENSITY_LOAD_DATA", "data/demo"))
KEY = (os.environ.get("PROPENSITY_API_KEYS", "").split(",") or [""])[0].strip()
IDS: list[dict] = []
EVENTS: list[dict] = []


@events.init.add_listener
def _load(environment, **kw):
    "Read ids and events once per process."
    if not KEY: raise SystemExit("set PROPENSITY_API_KEYS (the service's key) for the load test")
    from propensity.contracts import read_table
    tr = read_table(DATA / "training" / "training_set").sort_values("event_timestamp").tail(20_000)
    for u, s, p, e in zip(tr["user_id"], tr["session_id"], tr["product_id"], tr["sess_request_event"]):
        IDS.append({k: v for k, v in (("user_id", u), ("session_id", s), ("product_id", p),
                                      ("event_type", None if e == "none" else e)) if isinstance(v, str)})
    IDS.extend({"session_id": f"new-{i}"} for i in range(len(IDS) // 20))  # ~5% sessions the store has not seen yet
    days = sorted((DATA / "events").glob("dt=*"))
    for f in sorted(days[-1].glob("*.jsonl"))[:3] if days else []:
        for line in f.read_bytes().splitlines()[:20_000]:
            try: EVENTS.append(orjson.loads(line))
            except orjson.JSONDecodeError: pass   # the landing zone has malformed lines; the collector sees JSON only


def _req(ids: dict) -> dict:
    return {"anonymous_id": "load-test", **ids, "device": random.choice(("mobile", "desktop", "tablet"))}


class Shopper(FastHttpUser):
    "The front end: scores on page views, batch scores on listings, sends its event batches."
    wait_time = between(0.05, 0.2)

    def on_start(self):
        self.h = {"X-API-Key": KEY, "content-type": "application/json"}

    @task(20)
    def score(self):
        with self.client.post("/v1/score", data=orjson.dumps(_req(random.choice(IDS))), headers=self.h,
                              catch_response=True, name="/v1/score") as r:
            if r.status_code != 200: r.failure(f"status {r.status_code}")
            elif r.json().get("degraded"): r.failure(f"degraded: {r.json().get('degraded_reason')}")

    @task(3)
    def score_batch(self):
        body = {"requests": [_req(x) for x in random.sample(IDS, 10)]}
        self.client.post("/v1/score/batch", data=orjson.dumps(body), headers=self.h, name="/v1/score/batch")

    @task(2)
    def send_events(self):
        if not EVENTS: return
        i = random.randrange(max(len(EVENTS) - 20, 1))
        self.client.post("/v1/events", data=orjson.dumps({"events": EVENTS[i:i + 20]}), headers=self.h, name="/v1/events")
