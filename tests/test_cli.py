"""The installed `propensity` console script, run as a user runs it (a separate process)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from propensity.config import Settings
from propensity.onlinestore import OnlineStoreError, redis_client, stop_online_store

EXE = shutil.which("propensity", path=str(Path(sys.executable).parent)) or "propensity"


def run(*args, env=None, data=None):
    "Run the console script; REDIS_URL only when the test sets it, so the embedded store is the default."
    e = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    e.update(env or {})
    if data is not None: e["PROPENSITY_DATA"] = str(data)
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=e, timeout=300)


def test_config_prints_every_setting_from_the_environment(tmp_path):
    r = run("config", "--json", env={"SPARK_MASTER": "local[3]"}, data=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["SPARK_MASTER"] == "local[3]" and cfg["PROPENSITY_DATA"] == str(tmp_path)
    assert set(cfg) == {row["env"] for row in Settings.from_env({}).describe()}
    r = run("config", env={"REDIS_URL": "localhost:6379"})
    assert r.returncode == 2
    assert r.stderr.strip() == ("propensity config: error: REDIS_URL='localhost:6379': expected a URL starting "
                                "with redis://, rediss:// or unix:// (or unset for the embedded Valkey server)")


def test_simulate_writes_a_world_and_prints_its_summary(tmp_path):
    r = run("simulate", "--profile", "small", "--days", "1", "--seed", "3", "--out", str(tmp_path / "w"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "w" / "world.json").read_text())
    assert f"{summary['sessions']:,}" in r.stdout
    assert "Conversion of eligible sessions by country" in r.stdout
    assert summary["seed"] == 3 and summary["days"] == 1


def test_bad_flags_are_named_with_status_2(tmp_path):
    r = run("simulate", "--days", "-1", "--out", str(tmp_path))
    assert r.returncode == 2 and "--days=-1: expected a whole number of days >= 1" in r.stderr
    r = run("simulate", "--profile", "huge")
    assert r.returncode == 2 and "invalid choice: 'huge'" in r.stderr
    r = run("ingest", "--format", "rees46", "--input", str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and "no such file or folder" in r.stderr


def test_online_store_start_status_stop(tmp_path):
    settings = Settings.from_env({"PROPENSITY_DATA": str(tmp_path)})
    try:
        r = run("online-store", "start", data=tmp_path)
        assert r.returncode == 0, r.stderr
        url = r.stdout.splitlines()[0].split(": ", 1)[1]
        client = redis_client(url)          # the server outlives the command that started it
        client.set("k", "v")
        r = run("online-store", "status", data=tmp_path)
        assert "embedded" in r.stdout and "True" in r.stdout
        r = run("online-store", "stop", data=tmp_path)
        assert "online store stopped" in r.stdout
        with pytest.raises(OnlineStoreError, match="127.0.0.1"):
            redis_client(url, connect_timeout=0.5)
    finally:
        stop_online_store(settings)
