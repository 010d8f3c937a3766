"""The engine's crc32 is zlib's: the same values for every input, so files written before and
after the switch to ISA-L (and on a machine without it) read back alike."""

from __future__ import annotations

import random
import zlib

from sync_engine.log import checksum


def test_crc32_is_isa_l_where_installed_and_gives_zlibs_values() -> None:
    from isal import isal_zlib  # a dependency: the engine's install must bring it

    assert checksum.crc32 is isal_zlib.crc32
    rng = random.Random(20261204)
    for size in (0, 1, 3, 7, 8, 63, 64, 65, 4095, 4096, 4097, 65_536, 1_000_003, 10 * 2**20 + 5):
        data = rng.randbytes(size)
        assert checksum.crc32(data) == zlib.crc32(data), size
        view = memoryview(data)[size // 3 : size - size // 5]  # (how the readers call it)
        assert checksum.crc32(view) == zlib.crc32(view), size
        assert checksum.crc32(bytearray(data)) == zlib.crc32(data), size
