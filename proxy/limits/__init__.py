"""Limits the proxy puts on what one client can make it do.

- `clause`: how deep a client where / ORDER BY may nest (400 naming the limit).
- `admission`: per-principal open-request cap, token-bucket rate, bounded pool wait (429/503).
- `config`: the `limits:` config sections and their resolution per rule.
- `bucket`: the token bucket.
- `upstream`: engine request-line bound (414) and cleaning engine error bodies.
"""
