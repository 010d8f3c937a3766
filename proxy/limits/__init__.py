"""Limits the proxy puts on what one client can make it do.

- `clause`: how deep a client where / ORDER BY may nest (400 naming the limit).
"""
