"""Authentication: bearer token extraction, JWKS key cache, JWT verification."""
