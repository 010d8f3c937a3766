"""README.md's commands work as written: every `sh` block, in order, on a fresh copy of the
checkout in a directory only root can enter, against `make run` started in the background.

The copy is what a clean clone of this checkout holds (tracked and new, non-ignored files), in
`mktemp -d` under /root with mode 700 when run as root: Postgres runs as the `postgres` user
there, which cannot enter it, so this also proves `make run` works from a private clone. The
copy installs its own `.venv` and npm packages, as a new user's would (slow: minutes).

The README's ports are the defaults; the test picks free ones and rewrites `127.0.0.1:<port>`
in the commands (other engineers' tests run beside it). `make run` runs in the background; a
command marked `# runs until Ctrl-C` runs until its output shows what it is for, then gets
SIGINT. `make stop` and `make clean` are README commands too: they must stop the background run.
Commands in ```text blocks are usage templates and are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.demo.demo_harness import ROOT, DemoRun, free_port

README = ROOT / "README.md"
#: Commands in sh blocks that this test does not run, and why.
NOT_RUN = {
    "make run": "started in the background by the test (DemoRun), with free ports",
    "make test": "this test is part of make test",
}
#: What the output of a `# runs until Ctrl-C` command must show before it is stopped.
UNTIL = {"node .data/try/todos.mjs": "from psql"}
DEFAULT_PORTS = {"DEMO_PORT": 5173, "PROXY_PORT": 8080, "ENGINE_PORT": 3000, "PG_PORT": 54329}


def readme_commands() -> list[str]:
    """Every command line of the README's ```sh blocks, in order (comments kept)."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def _bare(command: str) -> str:
    return command.split("#", 1)[0].strip() if "#" in command else command


def _copy_checkout(target: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture
def private_checkout() -> Iterator[Path]:
    parent = "/root" if os.getuid() == 0 and os.path.isdir("/root") else None
    private = Path(tempfile.mkdtemp(prefix="shapegate-readme-", dir=parent))
    private.chmod(0o700)
    checkout = private / "shapegate"
    checkout.mkdir()
    _copy_checkout(checkout)
    try:
        yield checkout
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _script(commands: list[str], ports: dict[str, int]) -> str:
    lines = [
        "set -m  # background jobs get their own process group (Ctrl-C for one of them)",
        'run() { printf "\\n=== %s\\n" "$1"; eval "$1" || { s=$?; '
        'printf "README command failed (status %s): %s\\n" "$s" "$1"; exit 1; }; }',
        # run $1 until its output shows $2, then SIGINT it (as Ctrl-C would)
        'until_ctrl_c() { printf "\\n=== %s\\n" "$1"; local out; out=$(mktemp); '
        '( eval "$1" ) >"$out" 2>&1 & local pid=$! i=0; '
        'while ! grep -q -- "$2" "$out" && kill -0 "$pid" 2>/dev/null && [ $i -lt 1800 ]; '
        "do sleep 0.1; i=$((i+1)); done; "
        'local ok=1; grep -q -- "$2" "$out" && ok=0; '
        'kill -INT -- -"$pid" 2>/dev/null; wait "$pid" 2>/dev/null; cat "$out"; '
        '[ $ok = 0 ] || { printf "README command never showed %s: %s\\n" "$2" "$1"; exit 1; }; }',
    ]
    for command in commands:
        for name, default in DEFAULT_PORTS.items():
            command = command.replace(f"127.0.0.1:{default}", f"127.0.0.1:{ports[name]}")
        bare = _bare(command)
        if command.endswith("# runs until Ctrl-C"):
            expect = next(text for key, text in UNTIL.items() if key in bare)
            lines.append(f"until_ctrl_c {shlex.quote(bare)} {shlex.quote(expect)}")
        else:
            lines.append(f"run {shlex.quote(command)}")
    return "\n".join(lines) + "\n"


def _outputs(transcript: str) -> dict[str, str]:
    """command (without its comment, ports as run) -> what it printed."""
    parts = re.split(r"^=== (.*)$", transcript, flags=re.M)
    return {_bare(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _find(outputs: dict[str, str], start: str) -> str:
    return next(out for command, out in outputs.items() if command.startswith(start))


@pytest.mark.timeout(1200)
def test_readme_commands_in_order_from_a_private_clone(private_checkout: Path) -> None:
    commands = readme_commands()
    not_run = [c for c in commands if _bare(c) in NOT_RUN]
    assert sorted({_bare(c) for c in not_run}) == sorted(NOT_RUN), not_run
    assert _bare(commands[0]) == "make run", "the README starts with make run"
    to_run = [c for c in commands if _bare(c) not in NOT_RUN]
    assert to_run[-2:] == [c for c in to_run if c.startswith(("make stop", "make clean"))]

    ports = {name: free_port() for name in DEFAULT_PORTS}
    with DemoRun(
        checkout=private_checkout, data_dir=private_checkout / ".data", ports=ports
    ) as demo:
        banner = demo.start(timeout=900)  # installs .venv and npm packages: minutes
        # the banner shows the real ports and a snippet with the real token
        for name in ("DEMO_PORT", "PROXY_PORT", "ENGINE_PORT"):
            assert f"http://127.0.0.1:{ports[name]}" in banner
        token = re.search(r"TOKEN=(\S+)", banner)
        assert token is not None and f"Authorization: 'Bearer {token.group(1)}'" in banner
        assert "Node 18 or later" in banner and "todos.mjs" in banner
        pg_dir = Path((demo.data_dir / "pg-dir").read_text().strip())
        assert not str(pg_dir).startswith(str(private_checkout.parent))
        # the demo's files (secrets, alice's 24 h token in try/, every row in the engine's
        # shape logs) are closed to other local users
        assert stat.S_IMODE(demo.data_dir.stat().st_mode) & 0o077 == 0
        _check_postgres_asks_for_the_password(demo, ports["PG_PORT"])

        script = private_checkout / "readme-commands.sh"
        script.write_text(_script(to_run, ports))
        done = subprocess.run(
            ["bash", str(script)], cwd=private_checkout, env=demo.env(),
            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        transcript = done.stdout + done.stderr
        print(transcript[-6000:])
        assert done.returncode == 0, transcript[-6000:]
        assert demo.proc is not None and demo.proc.wait(30) == 0, demo.output()[-3000:]

    out = _outputs(done.stdout)
    first = _find(out, 'curl -si -H "Authorization: Bearer $TOKEN" \'http')
    assert "200 OK" in first and "buy milk" in first and "ship it" not in first
    live = _find(out, 'curl -s -H "Authorization: Bearer $TOKEN" "http')
    assert "from psql" in live
    engine = _find(out, 'curl -s "http://127.0.0.1')
    assert "ship it" in engine and "buy milk" in engine
    assert '"allowed": true' in _find(out, "printf '%s\\n' \"$TOKEN\" | shape-proxy explain")
    # the Node client's first answer (`await shape.rows`, printed before any change) already
    # has the row inserted a moment before: the demo's cache settings give fresh first answers
    node = _find(out, "npm install --prefix .data/try")
    assert "from psql" in node.split("\n]\n")[0], node
    assert "stopped the demo" in _find(out, "make stop")
    # make clean removed the demo's files and its Postgres cluster
    assert not (private_checkout / ".data").exists()
    assert not pg_dir.exists()


def _psql(port: int, **env: str) -> subprocess.CompletedProcess[str]:
    """`select current_user` over TCP as `postgres`, no password but what `env` gives."""
    return subprocess.run(
        ["psql", "-X", "-w", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
         "-d", "postgres", "-c", "select current_user"],
        env={"PATH": os.environ["PATH"], "PGPASSFILE": "/nonexistent", "PGCONNECT_TIMEOUT": "10",
             **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _check_postgres_asks_for_the_password(demo: DemoRun, port: int) -> None:
    """Every local user reaches 127.0.0.1: a login there without the demo's password (kept in
    demo.env, 0600) is refused, and the password is on no process's command line."""
    refused = _psql(port)
    assert refused.returncode != 0, "a TCP login without a password got in"
    assert "no password supplied" in refused.stderr, refused.stderr
    env_file = demo.data_dir / "demo.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    password = values["PGPASSWORD"]
    assert len(password) >= 32
    wrong = _psql(port, PGPASSWORD=password[:-1])
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
    right = _psql(port, PGPASSWORD=password)
    assert right.returncode == 0 and right.stdout.strip() == "postgres", right.stderr
    for pid in (demo.data_dir / "pids").read_text().split():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert password not in argv, f"pid {pid}: {argv!r}"


def test_readme_prerequisites_match_ci() -> None:
    readme = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    installed = set(re.findall(r"need\+=\(([\w-]+)\)", ci))
    assert {"postgresql", "nodejs", "npm", "nginx-light", "chromium"} <= installed, installed
    names_in_readme = {
        "postgresql": "`postgresql`",
        "nodejs": "Node.js",
        "npm": "npm",
        "nginx-light": "`nginx`",
        "chromium": "`chromium`",
        "make": "make",
    }
    for package in installed:
        assert names_in_readme[package] in readme, f"README does not mention {package}"
        if package != "make":
            assert f"`{package}`" in readme, f"README's CI sentence does not name {package}"
    check_node = ROOT / ".ci" / "check-node"
    if check_node.exists():
        text = check_node.read_text()
        major = re.search(r"need_major=(\d+)", text)
        minor = re.search(r"need_minor=(\d+)", text)
        assert major and minor
        version = f"{major.group(1)}.{minor.group(1)}"
    else:
        version = "20.10"  # node --test --test-concurrency (scripts/node-tests)
    assert f"Node.js {version} or later" in readme
    assert "scripts/node-tests" in (ROOT / "Makefile").read_text()
    assert "--test-concurrency" in (ROOT / "scripts" / "node-tests").read_text()
