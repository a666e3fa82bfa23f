"""`bench.slim_fatbin`: other GPUs' cubins zeroed, the kept ones and every header byte-identical."""

from __future__ import annotations

import struct

import pytest

from bench.slim_fatbin import MAGIC, slim

ENTRY_HEADER = 64


def entry(arch: int, payload: bytes) -> bytes:
    header = bytearray(ENTRY_HEADER)
    struct.pack_into("<HHIQ", header, 0, 2, 0x101, ENTRY_HEADER, len(payload))  # kind 2: a cubin
    struct.pack_into("<I", header, 28, arch)
    return bytes(header) + payload


def fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return MAGIC + struct.pack("<HHQ", 1, 16, len(body)) + body


def test_only_the_kept_generations_cubins_survive() -> None:
    sm80, sm90, sm90a = b"\x80" * 40, b"\x90" * 48, b"\x9a" * 8
    library = b"ELF-prefix" + fatbin(entry(80, sm80), entry(90, sm90)) + b"mid" + fatbin(entry(90, sm90a))
    data = bytearray(library)
    counts = slim(data, keep_major=9)
    assert counts == {"fatbins": 2, "kept_bytes": 56, "zeroed_bytes": 40, "fatbins_without_kept": 0}
    assert len(data) == len(library)  # no offset moves
    assert data.count(sm90) == 1 and data.count(sm90a) == 1 and sm80 not in data
    changed = [i for i, (a, b) in enumerate(zip(library, data, strict=True)) if a != b]
    first_payload = len(b"ELF-prefix") + 16 + ENTRY_HEADER
    assert changed == list(range(first_payload, first_payload + len(sm80)))  # the sm_80 payload, no more


def test_a_fatbin_with_no_kept_cubin_is_counted() -> None:
    data = bytearray(fatbin(entry(120, b"\x12" * 16)))
    assert slim(data, keep_major=9)["fatbins_without_kept"] == 1


@pytest.mark.parametrize("noise", [MAGIC + b"\x07\x00\x10\x00" + bytes(8), MAGIC + b"\x01\x00"])
def test_the_magic_inside_other_bytes_is_skipped(noise: bytes) -> None:
    data = bytearray(noise + fatbin(entry(86, b"\x86" * 8)))
    assert slim(data, keep_major=9) == {
        "fatbins": 1,
        "kept_bytes": 0,
        "zeroed_bytes": 8,
        "fatbins_without_kept": 1,
    }
