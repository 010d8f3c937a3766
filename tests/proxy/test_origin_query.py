"""The proxy reads the query of an origin-form request target (`/path?query`, no fragment)
without `httptools.parse_url` (`proxy.http.protocol.origin_query`): for every such target
llhttp accepts, the query must be the one `parse_url` finds, and `parse_url` must not refuse
it (it would have been a 400). Checked over every target of up to two printable characters
(and `?`) in the path, in the query and around a second `?`. No sockets; ~0.3 s.
"""

from __future__ import annotations

import itertools

import httptools

from proxy.http.protocol import origin_query


class _Target:
    def __init__(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url


def _llhttp_accepts(target: bytes) -> bool:
    parser = httptools.HttpRequestParser(_Target())
    try:
        parser.feed_data(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    except httptools.HttpParserError:
        return False
    return True


def test_the_query_of_every_origin_form_target_is_parse_urls() -> None:
    chars = [bytes([c]) for c in range(0x21, 0x7F) if c != ord("#")]
    checked = 0
    for a, b in itertools.product(chars, repeat=2):
        for target in (b"/" + a + b, b"/x?" + a + b, b"/" + a + b"?" + b, b"/?" + a + b"??" + b):
            if not _llhttp_accepts(target):
                continue
            assert origin_query(target) == (httptools.parse_url(target).query or b""), target
            checked += 1
    assert checked > 30_000


def test_other_forms_are_left_to_parse_url() -> None:
    for target in (b"*", b"http://h/v1/shape?a=1", b"/v1/shape?a=1#f", b"h:443", b""):
        assert origin_query(target) is None
    assert origin_query(b"/v1/shape") == b""
    assert origin_query(b"/v1/shape?") == b""
    assert origin_query(b"/v1/shape?table=a&where=x?y") == b"table=a&where=x?y"
