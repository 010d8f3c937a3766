"""The nginx tier never writes the engine `secret` into its error log (attack 20:12 / 21:00).

The proxy puts the engine secret in every upstream URL, and nginx's error-log lines quote the
request line and the upstream URL. config/nginx/nginx.conf sets `error_log stderr crit`, but the
shipped docker-compose.yml runs shapegate.conf under the official image's own nginx.conf, whose
`error_log ... notice` logs every upstream failure (engine restarting: connect refused) with
`secret=...` in it. Here: the rendered config with the main file's error_log as the image has it,
the engine "down" (a port nothing listens on), one shape request: the secret must not be in
nginx's stderr.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cdn.processes import nginx_binary, running, status_of
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "config" / "nginx" / "render.py"
SECRET = "cdn-secret-never-logged-7c1e9a"


@pytest.mark.parametrize("main_level", ["notice", "crit"])
def test_an_upstream_failure_does_not_log_the_engine_secret(main_level: str) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="shapegate-nginx-"))
    scratch.chmod(0o755)  # (workers started by root run as render.py's unprivileged account)
    port, dead = free_port(), free_port()  # nothing listens on `dead`: the engine is down
    conf_dir = scratch / "nginx"
    subprocess.run(
        [sys.executable, str(RENDER), "--dir", str(conf_dir), "--listen", f"127.0.0.1:{port}",
         "--engine", f"127.0.0.1:{dead}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    main = conf_dir / "nginx.conf"
    text = main.read_text()
    assert "error_log stderr crit;" in text
    # As the official nginx image's nginx.conf has it (docker-compose.yml), or as shipped.
    main.write_text(text.replace("error_log stderr crit;", f"error_log stderr {main_level};"))
    err = scratch / "stderr.log"
    nginx = [nginx_binary(), "-c", str(main), "-p", str(conf_dir)]
    with err.open("wb") as sink, running(nginx, stdout=subprocess.DEVNULL, stderr=sink):
        url = f"http://127.0.0.1:{port}/v1/shape?table=items&offset=-1&secret={SECRET}"
        assert status_of(url) == 502  # the engine is down: nginx's own answer
        time.sleep(0.3)  # (the worker writes its log line as it answers)
    log = err.read_text(errors="replace")
    shutil.rmtree(scratch, ignore_errors=True)
    assert SECRET not in log, log[-2000:]
