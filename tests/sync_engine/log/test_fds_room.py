"""The shape logs' cache of open files gives descriptors back when none is left.

The engine's connection cap counts the cache as it is now, not as big as it may grow (up to
4,096), so client connections may take descriptors the cache would have used: a write to a
file not in the cache then found none ("Too many open files": writes failed, replication
paused). The cache now closes its oldest half and opens again.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from sync_engine.log import fds


def test_a_write_finds_a_descriptor_when_the_process_has_none_left(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for i in range(8):
        fds.write_fd(str(tmp_path / f"cached-{i}"), b"x", 0)
    filler: list[int] = []
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 16, hard))
    try:
        while True:  # every descriptor the limit allows
            try:
                filler.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        fds.write_fd(str(tmp_path / "new"), b"y", 0)
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for i in range(8):
            fds.close_fd(str(tmp_path / f"cached-{i}"))
        fds.close_fd(str(tmp_path / "new"))
    assert (tmp_path / "new").read_bytes() == b"y"
