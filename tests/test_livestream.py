"""The live event stream against a real Redis-protocol server: what producers append, readers get back, in order."""
import orjson

from propensity.livestream import FIELD, START, iter_after, last_id, parse_id, publish, read_after, stream_length


def test_publish_then_page_through_in_order(redis_client):
    lines = [orjson.dumps({"event_id": f"e{i}", "n": i}) for i in range(2_345)]
    ids = publish(redis_client, lines[:1000] + [l.decode() for l in lines[1000:]], "s", batch=300)
    assert len(ids) == 2_345 and [parse_id(i) for i in ids] == sorted(parse_id(i) for i in ids)
    assert stream_length(redis_client, "s") == 2_345 and last_id(redis_client, "s") == ids[-1].decode()
    got = list(iter_after(redis_client, "s", page=700))
    assert [l for _, l in got] == lines and [i for i, _ in got] == ids
    # a reader resumes strictly after its position: nothing repeated, nothing skipped
    mid = ids[999].decode()
    assert [l for _, l in iter_after(redis_client, "s", after=mid)] == lines[1000:]
    assert read_after(redis_client, "s", after=ids[-1].decode()) == []
    # the end position is fixed when iteration starts: later appends are the next read's
    it = iter_after(redis_client, "s", after=ids[-3].decode())
    publish(redis_client, [b"late"], "s")
    assert [l for _, l in it] == lines[-2:]
    assert redis_client.xrange("s", count=1)[0][1] == {FIELD: lines[0]}


def test_empty_and_malformed_lines_are_kept_verbatim(redis_client):
    assert last_id(redis_client, "none") == START and list(iter_after(redis_client, "none")) == []
    publish(redis_client, [b"{not json", {"event_id": "x"}, ""], "s")
    assert [l for _, l in iter_after(redis_client, "s")] == [b"{not json", b'{"event_id":"x"}', b""]


def test_maxlen_caps_a_long_running_stream(redis_client):
    publish(redis_client, [b"x"] * 5_000, "capped", maxlen=1_000, batch=500)
    assert 1_000 <= stream_length(redis_client, "capped") < 5_000
