"""The page's "what the proxy did" panel: `shape-proxy explain`, called as a library.

`proxy.explain.explain` runs the proxy's own request path (token verification, query parsing,
policy, upstream URL) without contacting the engine, so the panel shows exactly what the
running proxy does with the page's request. The engine secret is not needed for that: the
config is loaded with a placeholder in the variable `upstream.secret_env` names, and the URL
shown is masked by `explain` itself, so no secret can reach the page.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from proxy.config.loader import ConfigError, LoadedConfig, load_config
from proxy.explain import explain

#: Stands in for the engine secret while building the (masked) upstream URL.
PLACEHOLDER_SECRET = "not-the-engine-secret"  # noqa: S105 (a placeholder, masked anyway)


class Explainer:
    """Loads the proxy config once (again when the file changes) and explains requests."""

    def __init__(self, config_path: str) -> None:
        self.path = Path(config_path)
        self._loaded: LoadedConfig | None = None
        self._mtime = 0.0

    def _config(self) -> LoadedConfig:
        mtime = self.path.stat().st_mtime
        if self._loaded is None or mtime != self._mtime:
            raw = yaml.safe_load(self.path.read_text())
            environ = dict(os.environ)
            secret_env = ((raw or {}).get("upstream") or {}).get("secret_env")
            if secret_env:
                environ[secret_env] = PLACEHOLDER_SECRET
            self._loaded = load_config(self.path, environ)
            self._mtime = mtime
        return self._loaded

    async def explain(self, url: str, token: str) -> dict[str, Any]:
        try:
            loaded = self._config()
        except (OSError, ConfigError) as exc:
            return {"url": url, "allowed": False, "message": f"proxy config: {exc}"}
        report = await explain(loaded, url, token=token, claims=None)
        if PLACEHOLDER_SECRET in repr(report):  # never expected: explain() masks the URL
            return {"url": url, "allowed": False, "message": "report withheld: secret not masked"}
        return report
