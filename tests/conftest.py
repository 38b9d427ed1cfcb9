"""Shared pytest fixtures: a real Redis-protocol server per test session (no fakes, no mocks)."""
import os

import pytest

from propensity.config import Settings
from propensity.onlinestore import EmbeddedValkey, redis_client as _redis_client


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """URL of this session's online-store server.

    With REDIS_URL set in the environment, that server (its db is flushed once here);
    otherwise a private EmbeddedValkey in a temporary folder, stopped when the session ends."""
    url = Settings.from_env({"REDIS_URL": os.environ.get("REDIS_URL", "")}).redis_url
    if url:
        r = _redis_client(url)
        r.flushdb()
        r.close()
        yield url
        return
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url):
    "A redis-py client (bytes in, bytes out) for the session's server; its db is flushed before each test."
    r = _redis_client(redis_url)
    r.flushdb()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="session")
def spark():
    "A local Spark session (local[2], the embedded default) shared by the tests that need one."
    from propensity.batch import spark_session
    s = spark_session(Settings.from_env({"SPARK_MASTER": "local[2]"}), "propensity-tests",
                      **{"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "3g"})
    yield s
    s.stop()


@pytest.fixture(scope="session")
def short_world(tmp_path_factory, spark):
    """A 7-day small world with its features and quality report, built once per test session (simulator, Spark batch
    job, data-quality checks). Tests that write into a world take their own copy: `copy_world(short_world, dest)`."""
    from propensity.batch import run_batch
    from propensity.quality import check_tables
    from propensity.simulate import simulate
    out = tmp_path_factory.mktemp("short_world") / "w"
    simulate("small", 7, 5, out, progress=False)
    run_batch(out, spark=spark, progress=False)
    check_tables(out).write(out / "quality")
    return out


def copy_world(src, dest):
    "A private copy of a built world (its registry, models and reports then belong to one test module)."
    import shutil
    shutil.copytree(src, dest)
    return dest
