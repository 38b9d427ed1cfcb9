"""Scoring latency, side by side on the same data and the same online store, in one run:

  (a) baseline   Feast `get_online_features` (feature service) + request-time features + `Booster.predict` on a
                 pandas DataFrame + calibration: how the reference system's Python path would score one session
  (b) in process this service's `Scorer.score` with `RespClient`: one pipelined HMGET round trip in Feast's layout,
                 on a persistent socket, hiredis parsing, fast value decoding,
                 LightGBM's single-row fast path, calibration, band and policy
  (c) HTTP       `propensity serve` (uvicorn, one worker) under an open-loop load generator on the same machine:
                 a fixed arrival rate (default 500 requests/s) for a fixed time (60 s; 15 s with --quick);
                 latency is measured from each request's scheduled send time, so a stall is not hidden
  (d) collector  the event collector's check (`split_events`) per call of 1 and of 100 landing-zone records, beside
                 the contract's validator on the same calls (what the collector ran on every batch before); then
                 `POST /v1/events` with one event per request, open loop (default 200 requests/s, at most 15 s)

Targets (issue 6): (b) p99 <= 0.25 ms and at least 4x lower than (a)'s p99; (c) p99 <= 3 ms at 500 requests/s
sustained for 60 s with zero errors, on 2 cores. (a) and (b) are checked to give the same probabilities.

The world: `--data DIR` (a world with features and a promoted model, e.g. data/demo after `make demo`), or a
7-day small world built first (simulate, Spark batch job, 2-trial training; not timed, a few minutes). Its
features are materialized by Feast into a private Valkey server started for the run (not timed).

    python benchmarks/serving.py --data data/demo --quick
    python benchmarks/serving.py --data data/demo            # the full 60 s HTTP run
Ends with one line `RESULT {json}`.
"""
import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from propensity.config import Settings
from propensity.contracts import read_table
from propensity.feast_repo import feature_store, materialize
from propensity.onlinestore import EmbeddedValkey, _free_port, redis_client
from propensity.scorer import SEGMENT_FEATURES, RespClient, Scorer, model_source, policy_source

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "servingbench"
KEY = "bench-key-0123456789"


def build_world(d: Path):
    from propensity.batch import run_batch
    from propensity.quality import check_tables
    from propensity.simulate import simulate
    from propensity.train import TrainConfig, train_pipeline
    print("building a 7-day small world with a promoted model (not timed) ...", flush=True)
    simulate("small", 7, 42, d, progress=False)
    run_batch(d, progress=False)
    check_tables(d).write(d / "quality")
    train_pipeline(d, TrainConfig(val_days=2, test_days=2, n_trials=2, timeout_s=120, max_rounds=300, early_stopping=20),
                   gates=dict(ece_max=1.0, segment_ece_max=1.0, pr_auc_tolerance=1.0))


def requests_of(d: Path, n: int, seed: int = 0) -> list[dict]:
    "Scoring requests from the newest scoring points of the world (their users, browsers, sessions, products), scored at the point."
    tr = read_table(d / "training" / "training_set").sort_values("event_timestamp").tail(20_000)
    rows = tr.sample(min(n, len(tr)), random_state=seed, replace=n > len(tr))
    at = pd.to_datetime(rows["event_timestamp"], utc=True).astype("datetime64[ns, UTC]").astype("int64") // 1_000_000
    return [{"user_id": u if isinstance(u, str) else None, "anonymous_id": a, "session_id": s,
             "product_id": p if isinstance(p, str) else None, "at_ms": int(t), "event_type": None if e == "none" else e}
            for u, a, s, p, t, e in zip(rows["user_id"], rows["anonymous_id"], rows["session_id"], rows["product_id"], at,
                                        rows["sess_request_event"])]


def pct(xs, q) -> float: return float(np.percentile(np.asarray(xs) * 1000, q))  # ms


def summary(xs) -> dict:
    return dict(n=len(xs), p50_ms=round(pct(xs, 50), 4), p90_ms=round(pct(xs, 90), 4), p99_ms=round(pct(xs, 99), 4),
                max_ms=round(float(np.max(xs)) * 1000, 3), mean_ms=round(float(np.mean(xs)) * 1000, 4))


def baseline(store, sc: Scorer, reqs: list[dict]) -> tuple[list[float], list[float]]:
    "(a): Feast online read + DataFrame + Booster.predict + calibration, per request."
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    mb = sc.models.current
    fs = store.get_feature_service("propensity_v1")
    times, probs = [], []
    for q in reqs:
        t = time.perf_counter()
        got = store.get_online_features(features=fs, entity_rows=[{"user_id": q["user_id"] or "", "anonymous_id": q["anonymous_id"], "session_id": q["session_id"],
                                                                   "product_id": q["product_id"] or ""}]).to_dict()
        df = pd.DataFrame(got)
        for f in mb.encoder.features:  # the spec's defaults for missing values, as the training set has them
            if f in df and df[f].isna().any():
                from propensity.features import FEATURES
                df[f] = df[f].fillna(next(x.default for x in FEATURES if x.name == f))
        from propensity.features import at_time
        row = at_time({c: df[c].iloc[0] for c in df.columns}, q["at_ms"], q.get("event_type"))
        X = mb.encoder.transform(pd.DataFrame([row]))
        raw = mb.model.booster.predict(X)
        p = mb.calibrated.calibrate(raw, {c: [row[f]] for c, f in SEGMENT_FEATURES.items()})[0]
        times.append(time.perf_counter() - t); probs.append(float(p))
    return times, probs


def in_process(sc: Scorer, r, reqs: list[dict]) -> tuple[list[float], list[float]]:
    "(b): Scorer.score per request (`RespClient`: one pipelined round trip on a persistent socket)."
    times, probs = [], []
    for q in reqs:
        t = time.perf_counter()
        a = sc.score(r, q)
        times.append(time.perf_counter() - t); probs.append(a["probability"])
    return times, probs


# ------------------------------------------------------------------------------------------ HTTP load
async def _conn(port):
    return await asyncio.open_connection("127.0.0.1", port)


async def _call(conn, raw: bytes) -> int:
    reader, writer = conn
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    n = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:": n = int(line[15:])
    if n: await reader.readexactly(n)
    return status


def _request(body: bytes, path: bytes = b"/v1/score") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nx-api-key: " + KEY.encode() +
            b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def open_loop(port: int, raws: list[bytes], rate: float, seconds: float, conns: int = 32) -> dict:
    "Send the raw HTTP requests `raws` (cycled) at a fixed rate (open loop) over `conns` keep-alive connections; latency from the scheduled time."
    pool = asyncio.Queue()
    for _ in range(conns): pool.put_nowait(await _conn(port))
    n = int(rate * seconds)
    lat, errors, statuses = [], 0, {}
    now = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    t0 = now() + 0.2
    tasks = []

    async def one(i, due):
        nonlocal errors
        conn = await pool.get()
        try:
            s = await _call(conn, raws[i % len(raws)])
            statuses[s] = statuses.get(s, 0) + 1
            if s != 200: errors += 1
        except Exception:
            errors += 1
            conn = await _conn(port)
        finally:
            pool.put_nowait(conn)
        lat.append(now() - due)

    for i in range(n):
        due = t0 + i / rate
        d = due - now()
        if d > 0: await asyncio.sleep(d)
        tasks.append(asyncio.ensure_future(one(i, due)))
    await asyncio.gather(*tasks)
    wall = now() - t0
    while not pool.empty():
        _, w = pool.get_nowait(); w.close()
    return dict(**summary(lat), sent=n, errors=errors, statuses={str(k): v for k, v in statuses.items()},
                achieved_rps=round(n / wall, 1), seconds=round(wall, 1))


def collector_in_process(events: list[dict], size: int, n: int) -> tuple[list[float], list[float], int]:
    "(d) in process, per call of `size` events: `split_events` (the collector's check) and, on the same calls, the contract's validator alone (the baseline: what the collector ran on every batch before)."
    from propensity.contracts import EVENT
    from propensity.serving import split_events
    calls = [events[(i * size) % len(events):][:size] for i in range(n)]
    split_events(calls[0]); EVENT.validate(calls[0])
    t_new, t_old, agree = [], [], 0
    for c in calls:
        t = time.perf_counter(); ok, _ = split_events(c); t_new.append(time.perf_counter() - t)
        t = time.perf_counter(); v = EVENT.validate(c, source=[str(i) for i in range(len(c))]); t_old.append(time.perf_counter() - t)
        agree += sorted(set(range(len(c))) - {int(x) for x in v.rejected["source"]}) == ok
    return t_new, t_old, agree


def start_service(d: Path, url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": url, "PROPENSITY_FEAST_PROJECT": PROJECT, "PROPENSITY_API_KEYS": KEY, "PROPENSITY_LOG_LEVEL": "WARNING"}
    p = subprocess.Popen([str(Path(sys.executable).parent / "propensity"), "serve", "--data", str(d), "--port", str(port)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200: return p
        except httpx.TransportError: pass
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start: {p.stderr.read().decode()[-2000:] if p.poll() is not None else 'timeout'}")
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="world with features and a promoted model (default: build a small one)")
    ap.add_argument("--quick", action="store_true", help="fewer requests; a 15 s HTTP run")
    ap.add_argument("--rate", type=float, default=500.0, help="HTTP requests per second (default 500)")
    ap.add_argument("--seconds", type=float, default=None, help="HTTP run length (default 60; 15 with --quick)")
    ap.add_argument("--events-rate", type=float, default=200.0, help="POST /v1/events requests per second, one event each (default 200)")
    a = ap.parse_args()
    seconds = a.seconds or (15.0 if a.quick else 60.0)
    n_a, n_b = (200, 5000) if a.quick else (1000, 20000)
    tmp = tempfile.TemporaryDirectory()
    if a.data: d = Path(a.data).resolve()
    else: d = Path(tmp.name) / "world"; build_world(d)
    if not (d / "registry" / "promoted.json").exists(): sys.exit(f"{d}: no promoted model (run `propensity train --data {d}`)")
    server = EmbeddedValkey(Path(tmp.name) / "valkey", port=_free_port()).start()
    try:
        settings = Settings(data_dir=d, redis_url=server.url, feast_project=PROJECT)
        print(f"materializing {d} into a private Valkey at {server.url} (not timed) ...", flush=True)
        materialize(settings, d, verbose=False)
        store = feature_store(settings, d)
        r = redis_client(server.url)
        sc = Scorer(PROJECT, model_source(d / "registry"), policy_source(ROOT / "serving" / "policy.toml"))
        reqs = requests_of(d, max(n_a, 2000))
        present = sum(not sc.score(r, q)["missing"] or "session" not in sc.score(r, q)["missing"] for q in reqs[:200])
        print(f"model {sc.models.current.version}, {len(sc.models.current.encoder.features)} features; "
              f"{present}/200 sampled sessions have online features", flush=True)

        # (a) and (b) on the same requests, alternating warm-up; then the equality check
        baseline(store, sc, reqs[:20]); in_process(sc, r, reqs[:500])
        gc.collect()
        ta, pa = baseline(store, sc, reqs[:n_a])
        rc = RespClient(server.url, 0.05)
        in_process(sc, rc, reqs[:500])
        gc.collect(); gc.freeze()
        tb, pb = in_process(sc, rc, (reqs * (n_b // len(reqs) + 1))[:n_b])
        gc.unfreeze()
        t_redispy, _ = in_process(sc, r, reqs[:2000])  # the same scorer with redis-py's pipeline, for comparison
        diff = float(np.max(np.abs(np.array(pa) - np.array(pb[:n_a]))))
        # components of (b): the round trip alone, the model alone
        mb, rd = sc.models.current, sc.reader
        t_fetch, t_model = [], []
        for q in reqs[:2000]:
            cmds = rd.commands(q)
            t = time.perf_counter(); got = iter(rc.hmget_many([c for c in cmds if c])); rd.decode([next(got) if c else None for c in cmds])
            t_fetch.append(time.perf_counter() - t)
        vals = [sc.values(q, [r.hmget(*c) if c else None for c in sc.plan(q)]) for q in reqs[:2000]]
        for v in vals:
            t = time.perf_counter(); mb.score(v); t_model.append(time.perf_counter() - t)
        t_booster = []
        for v in vals[:300]:
            t = time.perf_counter(); mb.model.booster.predict(np.array([mb.encoder.row(v)])); t_booster.append(time.perf_counter() - t)
        A, B = summary(ta), summary(tb)
        from propensity.serving import _landing_events
        events = _landing_events(d, limit=20_000)
        col = {size: collector_in_process(events, size, n) for size, n in ((1, 2000 if not a.quick else 500), (100, 200 if not a.quick else 50))}

        # (c) HTTP under load
        port = _free_port()
        proc = start_service(d, server.url, port)
        try:
            import uvloop
            print(f"HTTP: open-loop {a.rate:.0f} requests/s for {seconds:.0f} s against http://127.0.0.1:{port}/v1/score ...", flush=True)
            import psutil
            ps = psutil.Process(proc.pid)
            # CPU the service (and its collector worker) spent per request (user + system): independent of how busy the machine is
            service_cpu = lambda: sum(sum(x.cpu_times()[:2]) for x in [ps, *ps.children(recursive=True)])
            cpu0 = service_cpu(); me0 = psutil.Process().cpu_times()
            raws = [_request(orjson.dumps(q)) for q in reqs]
            gc.collect(); gc.freeze()  # as for (b): the generator's own collections (Feast, pandas loaded) show up as latency
            C = uvloop.run(open_loop(port, raws, a.rate, seconds))
            cpu1 = service_cpu(); me1 = psutil.Process().cpu_times()
            C["service_cpu_us_per_request"] = round((cpu1 - cpu0) / C["sent"] * 1e6, 1)
            C["generator_cpu_us_per_request"] = round(((me1.user + me1.system) - (me0.user + me0.system)) / C["sent"] * 1e6, 1)
            # (d) the event collector: one landing-zone record per request (malformed ones included), open loop
            ev_seconds = min(seconds, 15.0)
            print(f"HTTP: open-loop {a.events_rate:.0f} requests/s of one event each for {ev_seconds:.0f} s against /v1/events ...", flush=True)
            cpu0 = service_cpu()
            D = uvloop.run(open_loop(port, [_request(orjson.dumps({"events": [e]}), b"/v1/events") for e in events[:5000]],
                                     a.events_rate, ev_seconds))
            D["service_cpu_us_per_request"] = round((service_cpu() - cpu0) / D["sent"] * 1e6, 1)
            gc.unfreeze()
        finally:
            proc.terminate(); proc.wait(10)

        print(f"\n{'path':<58} {'n':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for name, s in (("(a) baseline: Feast get_online_features + Booster.predict(DataFrame)", A),
                        ("(b) this scorer in process (one HMGET round trip + fast path)", B),
                        (f"(c) HTTP end to end, open loop {a.rate:.0f}/s for {seconds:.0f}s", C)):
            print(f"{name[:58]:<58} {s['n']:>7} {s['p50_ms']:>8.3f} {s['p90_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['max_ms']:>8.2f}")
        print(f"  (c) CPU per request: service {C['service_cpu_us_per_request']:.0f} us (at {a.rate:.0f}/s: "
              f"{C['service_cpu_us_per_request'] * a.rate / 1e4:.0f}% of one core), load generator {C['generator_cpu_us_per_request']:.0f} us")
        F, M, BO, RP = summary(t_fetch), summary(t_model), summary(t_booster), summary(t_redispy)
        print(f"  (b) with redis-py's pipeline instead of RespClient: p50 {RP['p50_ms']:.3f} / p99 {RP['p99_ms']:.3f} ms")
        print(f"  (b) parts: round trip + decode p50 {F['p50_ms']:.3f} / p99 {F['p99_ms']:.3f} ms; model (encode, fast predict, "
              f"calibrate) p50 {M['p50_ms']:.3f} / p99 {M['p99_ms']:.3f} ms; Booster.predict on one numpy row p50 {BO['p50_ms']:.3f} ms")
        print(f"  (a) vs (b): same probabilities, max |difference| {diff:.2e} over {n_a} requests")
        print(f"\n{'event collector: check of one call (in process)':<58} {'calls':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        Dp = {}
        for size, (t_new, t_old, agree) in col.items():
            Dp[size] = dict(split_events=summary(t_new), validator=summary(t_old), same_verdicts=agree)
            for name, s in ((f"(d) split_events, {size} event(s) per call", Dp[size]["split_events"]),
                            ("    baseline: the contract's validator on the same calls", Dp[size]["validator"])):
                print(f"{name[:58]:<58} {s['n']:>7} {s['p50_ms']:>8.3f} {s['p90_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['max_ms']:>8.2f}")
            print(f"    same accepted events on {agree} of {len(t_new)} calls")
        print(f"(d) HTTP POST /v1/events, one event each, open loop {a.events_rate:.0f}/s for {D['seconds']:.0f} s: p50 {D['p50_ms']:.2f} / "
              f"p99 {D['p99_ms']:.2f} ms, {D['achieved_rps']:.0f} requests/s achieved, {D['errors']} errors, "
              f"service CPU {D['service_cpu_us_per_request']:.0f} us per request")
        ratio = A["p99_ms"] / B["p99_ms"]
        t_b = B["p99_ms"] <= 0.25 and ratio >= 4
        t_c = C["p99_ms"] <= 3.0 and C["errors"] == 0 and seconds >= 60 and C["achieved_rps"] >= 0.98 * a.rate
        print(f"\n(b) p99 {B['p99_ms']:.3f} ms (target <= 0.25), {ratio:.1f}x lower than (a) p99 {A['p99_ms']:.3f} ms (target >= 4x): "
              f"{'MET' if t_b else 'NOT MET'}")
        print(f"(c) p99 {C['p99_ms']:.3f} ms at {C['achieved_rps']:.0f} requests/s for {C['seconds']:.0f} s, {C['errors']} errors "
              f"(target <= 3 ms at 500/s for 60 s, 0 errors): " + ("MET" if t_c else "NOT MET" if seconds >= 60 else
              "NOT DECIDED (shorter than 60 s: run without --quick)"))
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end (other work on the machine makes tails noisy)")
        print("RESULT " + json.dumps(dict(benchmark="serving", quick=a.quick, model=sc.models.current.version,
                                          baseline=A, in_process=B, http=C, collector_http=D, collector_in_process=Dp, in_process_parts=dict(fetch=F, model=M, booster_predict_numpy=BO), in_process_redis_py=RP,
                                          p99_ratio=round(ratio, 1), max_abs_diff=diff, target_in_process_met=t_b, target_http_met=t_c,
                                          load_average=round(os.getloadavg()[0], 2))))
    finally:
        server.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
