"""The bodies of the engine's error answers, against Electric's (ServeShapePlug)."""

from __future__ import annotations

import orjson

from sync_engine.errors import ServiceUnavailable
from sync_engine.http.errors import error_response


def test_database_unreachable_says_what_electric_says() -> None:
    """Electric answers a database it cannot reach with 503
    `{"code": "database_unreachable", "error": "Database is unreachable"}`, no-store; the engine
    says the same (and keeps `message`, as on its other 503s), with its Retry-After."""
    for message, retry_after in (("Database is unreachable", 1), ("Database is not answering", 5)):
        resp = error_response(ServiceUnavailable(message, retry_after, "database_unreachable"))
        assert resp.status == 503
        assert isinstance(resp.body, bytes)
        body = orjson.loads(resp.body)
        assert body["code"] == "database_unreachable"
        assert body["error"] == "Database is unreachable"
        assert body["message"] == message
        assert resp.headers["retry-after"] == str(retry_after)
        assert resp.headers["cache-control"] == "no-store"
        assert resp.headers["surrogate-control"] == "no-store"


def test_other_503s_keep_their_message_only() -> None:
    resp = error_response(ServiceUnavailable("Shape limit reached for this source", 10))
    assert isinstance(resp.body, bytes)
    assert orjson.loads(resp.body) == {"message": "Shape limit reached for this source"}
