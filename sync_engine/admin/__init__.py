"""The admin listener: a JSON API for sources (`api.py`) and the dashboard that uses it.

It runs on its own address (default 127.0.0.1:3100), apart from /v1/shape, and only when an
admin token is configured; every /api request must carry it (`Authorization: Bearer`).
"""

from .api import build_admin_app

__all__ = ["build_admin_app"]
