"""Honest setup: the Node check of `.ci/run`, temp dirs cleaned up, docs and examples that hold."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _fake_node(tmp_path: Path, version: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    node = bin_dir / "node"
    node.write_text(f"#!/bin/sh\necho {version}\n")
    node.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NODE_INSTALL": "0"}


def test_check_node_refuses_node_18_with_one_clear_line(tmp_path: Path) -> None:
    out = subprocess.run([str(ROOT / ".ci" / "check-node")], env=_fake_node(tmp_path, "v18.20.4"),
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Node >= 20.10" in lines[0] and "v18.20.4" in lines[0]


def test_check_node_accepts_20_10_and_later(tmp_path: Path) -> None:
    for i, version in enumerate(["v20.10.0", "v22.1.0"]):
        d = tmp_path / str(i)
        d.mkdir()
        out = subprocess.run([str(ROOT / ".ci" / "check-node")], env=_fake_node(d, version),
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert out.returncode == 0, out.stderr
    d = tmp_path / "old"
    d.mkdir()
    out = subprocess.run([str(ROOT / ".ci" / "check-node")], env=_fake_node(d, "v20.9.0"),
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1


def test_ci_run_checks_node_before_the_tests() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert script.index("\n.ci/check-node") < script.rindex("\nmake test")


def test_a_test_run_leaves_no_postgres_cluster_in_the_temp_dir(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The session cluster's directory (~56 MB) is deleted when the tests end."""
    tests = tmp_path / "suite"
    tests.mkdir()
    (tests / "conftest.py").write_text(
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"spec = importlib.util.spec_from_file_location('repo_conftest', {str(ROOT / 'tests' / 'conftest.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "pg_server_url, db_url = mod.pg_server_url, mod.db_url\n"
    )
    (tests / "test_uses_db.py").write_text(
        textwrap.dedent("""
        import psycopg

        def test_db(db_url):
            with psycopg.connect(db_url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    """)
    )
    # Not under tmp_path (0700): the cluster runs as `postgres` when the tests run as root.
    tmpdir = Path(tempfile.mkdtemp(prefix="cli-tmpdir-"))
    tmpdir.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    env = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"}
    env["TMPDIR"] = str(tmpdir)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tests),
         "-o", "addopts=", str(tests)],
        cwd=tests, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    left = [p.name for p in tmpdir.iterdir() if p.name.startswith("shapegate-")]
    assert left == []


def test_multi_tenant_example_names_a_uuid_source_id() -> None:
    config = yaml.safe_load((ROOT / "config" / "examples" / "multi-tenant.yaml").read_text())
    uuid.UUID(config["upstream"]["source_id"])


def test_benchmarks_doc_points_only_at_files_in_the_repository() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    pointers = {m for m in re.findall(r"`([^`\s]+)`", text) if re.search(r"\.(py|md|sh)$|/", m)}
    pointers = {p for p in pointers if not p.startswith("/proc/")}
    missing = [
        p for p in sorted(pointers)
        if not any((ROOT / base / p).exists() for base in ("", "benchmarks", "config/nginx"))
    ]  # fmt: skip
    assert missing == []
