"""`headers.if_none_match_hits`: which If-None-Match values revalidate a tag (a 304).

Its fast path (the header is the tag, byte for byte: what a client sends back) must answer
as the general one does for every value: checked here against a plain restatement of the
rule (a comma-separated list of tags, each compared without its quotes and spaces)."""

from __future__ import annotations

import pytest

from sync_engine.http.headers import etag, if_none_match_hits

TAG = etag("3367019531-1796577758461869", "0_3", "0_4", no_change=False)


def _rule(header: str | None, tag: str) -> bool:
    if not header:
        return False
    return any(p.strip().strip('"') == tag.strip('"') for p in header.split(","))


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        TAG,
        TAG[1:-1],  # (unquoted)
        f" {TAG} ",
        f'"other", {TAG}',
        f'{TAG},"other"',
        '"other"',
        TAG[:-2] + '"',
        TAG + TAG,
        "*",
        f"W/{TAG}",
    ],
)
def test_a_header_revalidates_the_tag_as_the_rule_says(header: str | None) -> None:
    assert if_none_match_hits(header, TAG) == _rule(header, TAG)


def test_the_tag_sent_back_alone_revalidates() -> None:
    assert if_none_match_hits(TAG, TAG)
    assert not if_none_match_hits(TAG, etag("1-2", "0_3", "0_4", no_change=False))
