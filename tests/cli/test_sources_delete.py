"""`sync-engine sources delete` asks before dropping a slot and every shape log."""

from __future__ import annotations

import io
from typing import Any

import pytest

from sync_engine.tenants import cli

SOURCE: dict[str, Any] = {"source_id": "6f1c2a8e-3b4d-4e5f-9a7b-1c2d3e4f5a6b", "name": "shop",
          "slot_name": "shapegate_slot_x", "publication_name": "shapegate_pub_x",
          "shape_count": 12}  # fmt: skip


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(monkeypatch: pytest.MonkeyPatch, stdin: io.StringIO, *flags: str) -> list[str]:
    calls: list[str] = []

    def request(args: Any, method: str, path: str, body: Any = None) -> Any:
        calls.append(method)
        return SOURCE if method == "GET" else {**SOURCE, "warnings": []}

    monkeypatch.setattr(cli, "_request", request)
    monkeypatch.setattr("sys.stdin", stdin)
    args = cli.build_parser().parse_args(["delete", SOURCE["source_id"], *flags])
    cli.run(args)
    return calls


def test_delete_on_a_terminal_needs_the_name_typed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(monkeypatch, Terminal("shop\n")) == ["GET", "DELETE"]
    prompt = capsys.readouterr().err
    assert (
        "shapegate_slot_x" in prompt
        and "12 shape logs" in prompt
        and "Type the source name" in prompt
    )
    with pytest.raises(cli.CliError, match="not deleted"):
        _run(monkeypatch, Terminal("y\n"))


def test_delete_without_a_terminal_needs_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(cli.CliError, match="--yes"):
        _run(monkeypatch, io.StringIO(""))
    assert _run(monkeypatch, io.StringIO(""), "--yes") == ["DELETE"]


def test_sources_usage_mistakes_are_one_line() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "sync_engine", "sources", "delete"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "sync-engine sources delete: the following arguments are required: source_id"
        " (see sync-engine sources delete --help)"
    ]
