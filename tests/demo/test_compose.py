"""docker-compose.yml agrees with the image, its entrypoint and the shipped configs.

No Docker daemon here, so this reads the files the way `docker compose up` would use them:
the environment the entrypoint requires is set, every variable given is one the entrypoint
or the programs know, the proxy config mounted into the image loads with the secrets the
compose file provides, the ports line up (published -> proxy -> nginx -> engine), every
mounted host path exists, and nginx's template gets every placeholder it uses (and, with
nginx installed, the rendered config passes `nginx -t`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.config.loader import load_config

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = (ROOT / "scripts" / "container-entrypoint").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
NGINX_TEMPLATE = "/etc/nginx/templates/shapegate.conf.template"
FAKE_ENV = {
    "POSTGRES_PASSWORD": "pw",
    "ENGINE_SECRET": "e" * 40,
    "SHAPE_PROXY_JWT_SECRET": "j" * 40,
}


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:?message}` and `${NAME:-default}`."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if name in env and env[name] != "":
            return env[name]
        if op == ":?":
            raise AssertionError(f"required variable {name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:\?|:-)?([^}]*)\}", sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = (ROOT / "docker-compose.yml").read_text()
    return yaml.safe_load(_interpolate(raw, FAKE_ENV))


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (bind mounts only)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(("./", "/")):
            out[target] = source
    return out


def _dockerfile_env() -> dict[str, str]:
    block = re.search(r"^ENV SHAPE_PROXY_CONFIG.*?(?=^\S|\Z)", DOCKERFILE, re.M | re.S)
    assert block is not None
    return dict(re.findall(r"(\w+)=(\S+)", block.group(0)))


def test_services_and_postgres_logical_replication(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"postgres", "shapegate", "nginx"}
    command = " ".join(services["postgres"]["command"])
    assert "wal_level=logical" in command
    assert services["shapegate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["shapegate"]["build"] == "."


def test_the_compose_file_refuses_to_start_without_its_secrets() -> None:
    raw = (ROOT / "docker-compose.yml").read_text()
    for name in FAKE_ENV:
        with pytest.raises(AssertionError, match=name):
            _interpolate(raw, {k: v for k, v in FAKE_ENV.items() if k != name})


def test_shapegate_environment_matches_the_entrypoint(compose: dict[str, Any]) -> None:
    env = _env(compose["services"]["shapegate"])
    required = set(re.findall(r'if \[ -z "\$\{(\w+):-\}" \]', ENTRYPOINT))
    assert required == {"DATABASE_URL", "ENGINE_SECRET"}, required
    assert required <= set(env)
    documented = set(re.findall(r"^#\s+(\w+)\s", ENTRYPOINT, re.M))
    documented |= {"SHAPE_PROXY_HOST", "SHAPE_PROXY_PORT"}  # "SHAPE_PROXY_HOST/PORT" in the list
    proxy_secrets = {"SHAPE_PROXY_JWT_SECRET"}  # named by the mounted proxy config (checked below)
    unknown = {name for name in env if name not in documented | proxy_secrets}
    assert not unknown, f"variables the entrypoint does not know: {unknown}"
    # the database is the postgres service; its password goes to libpq beside the URL (a
    # password inside it would need percent-encoding, which the postgres image's raw use of
    # the same variable rules out: tests/container's hostile-password test runs this for real)
    url = urlsplit(env["DATABASE_URL"])
    assert (url.hostname, url.port, url.password) == ("postgres", 5432, None)
    assert env["PGPASSWORD"] == "pw"


def test_proxy_config_mount_loads_with_the_compose_secrets(compose: dict[str, Any]) -> None:
    shapegate = compose["services"]["shapegate"]
    env = _env(shapegate)
    config_in_image = env.get("SHAPE_PROXY_CONFIG", _dockerfile_env()["SHAPE_PROXY_CONFIG"])
    host_path = _mounts(shapegate)[config_in_image]
    loaded = load_config(ROOT / host_path, environ=env)  # fails if a secret_env is not given
    assert loaded.upstream_secret is not None
    assert loaded.upstream_secret.get_secret_value() == env["ENGINE_SECRET"]


def test_ports_line_up(compose: dict[str, Any]) -> None:
    services = compose["services"]
    shapegate, nginx = services["shapegate"], services["nginx"]
    env, nginx_env = _env(shapegate), _env(nginx)
    image_env = {**_dockerfile_env(), **env}
    # shapegate shares nginx's namespace: nginx owns it and stays up, so a shapegate restarted
    # by its policy joins the live namespace again (the other way round, a restarted owner
    # leaves the other container in a dead namespace, docker/compose#6626)
    assert shapegate["network_mode"] == "service:nginx"
    assert shapegate["depends_on"]["nginx"]["condition"] == "service_started"
    assert "network_mode" not in nginx and "depends_on" not in nginx
    assert {s.get("restart") for s in services.values()} == {"unless-stopped"}
    # published port (by the namespace's owner) -> the proxy's listen port
    assert "ports" not in shapegate
    published = [str(p) for p in nginx["ports"]]
    proxy_port = image_env["SHAPE_PROXY_PORT"]
    assert any(p.split(":")[-1] == proxy_port for p in published), published
    # the engine listens on the shared localhost
    engine_port = image_env.get("SHAPEGATE_ENGINE_PORT", "3000")
    assert nginx_env["SHAPEGATE_ENGINE"] == f"127.0.0.1:{engine_port}"
    # the proxy's upstream is nginx
    host_path = _mounts(shapegate)[image_env["SHAPE_PROXY_CONFIG"]]
    upstream = urlsplit(yaml.safe_load((ROOT / host_path).read_text())["upstream"]["url"])
    assert f"{upstream.hostname}:{upstream.port}" == nginx_env["SHAPEGATE_LISTEN"]


def test_mounted_files_exist_and_nginx_gets_every_placeholder(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for target, source in _mounts(service).items():
            assert (ROOT / source).is_file(), f"{name}: {source} (mounted at {target}) is missing"
    nginx = compose["services"]["nginx"]
    template = _mounts(nginx)[NGINX_TEMPLATE]
    used = set(re.findall(r"\$\{(SHAPEGATE_[A-Z_]+)\}", (ROOT / template).read_text()))
    assert used and used <= set(_env(nginx)), used - set(_env(nginx))
    assert _env(nginx)["SHAPEGATE_CACHE_DIR"] in {v.split(":")[1] for v in nginx["volumes"]}


def test_rendered_nginx_config_passes_nginx_t(compose: dict[str, Any], tmp_path: Path) -> None:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (.ci/run installs nginx-light)")
    nginx_env = _env(compose["services"]["nginx"])
    out = subprocess.run(
        [sys.executable, str(ROOT / "config" / "nginx" / "render.py"),
         "--listen", nginx_env["SHAPEGATE_LISTEN"], "--engine", nginx_env["SHAPEGATE_ENGINE"],
         "--dir", str(tmp_path / "nginx")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    check = subprocess.run(
        ["nginx", "-t", "-q", "-c", str(tmp_path / "nginx" / "nginx.conf")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_an_unchanged_copy_of_env_example_does_not_start() -> None:
    """`cp config/compose/env.example .env; docker compose up` must refuse to start: the
    example once held placeholders long enough to pass every check, so a deployment that
    skipped "put real secrets in .env" ran with a JWT signing key published in this repo
    (anyone could mint a token for any user). Every variable is empty there, and compose's
    `${NAME:?...}` refuses an empty value."""
    example = (ROOT / "config" / "compose" / "env.example").read_text()
    env = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    assert set(env) == set(FAKE_ENV), "env.example names other variables than compose uses"
    assert all(value == "" for value in env.values()), env
    raw = (ROOT / "docker-compose.yml").read_text()
    for name in env:
        with pytest.raises(AssertionError, match=f"required variable {name}"):
            _interpolate(raw, {**FAKE_ENV, name: env[name]})
