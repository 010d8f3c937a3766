"""Upstream: building the engine URL from a decision, and forwarding with streaming."""
