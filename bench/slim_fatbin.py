"""Blank the GPU code a shared library carries for other GPUs, so that it compresses to what one GPU needs.

    python -m bench.slim_fatbin LIBRARY [--keep-major 9]

Made for `bench/gpu_carry.sh`: onnxruntime-gpu's CUDA provider (`libonnxruntime_providers_cuda.so`,
284 MB) holds 609 CUDA fat binaries with a cubin for each of sm_75, 80, 86, 89, 90/90a and 120; its
wheel does not fit the lent GPU machines' transfer limit in few calls. This zeroes, in place, the payload
of every cubin whose compute capability's major version is not `--keep-major`, and keeps every header, so
no offset in the library moves. The CUDA driver loads, for a device of capability 9.x, a 9.x cubin and
never reads the others (cubins are binary-compatible within one major version only). Zeroed, the
provider compresses from 186 MB (xz, all cubins) to about 50 MB (sm_90 kept).

A fat binary (`0xBA55ED50`): a 16-byte header (magic u32, version u16, header size u16, size u64), then
entries, each a header (kind u16, version u16, header size u32, payload size u64, ..., arch u32 at byte
28) and its payload. Fat binaries without a cubin for the kept major are left as they are.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Annotated

import typer

MAGIC = struct.pack("<I", 0xBA55ED50)
ARCH_OFFSET = 28  # in an entry's header: the compute capability, e.g. 90 for sm_90


def slim(data: bytearray, keep_major: int) -> dict[str, int]:
    """Zero the payload of every cubin not of compute capability `keep_major`.x; returns the counts."""
    counts = {"fatbins": 0, "kept_bytes": 0, "zeroed_bytes": 0, "fatbins_without_kept": 0}
    at = 0
    while (at := data.find(MAGIC, at)) >= 0:
        version, header = struct.unpack_from("<HH", data, at + 4)
        (size,) = struct.unpack_from("<Q", data, at + 8)
        if version != 1 or header != 16 or at + header + size > len(data):
            at += len(MAGIC)  # the magic's bytes inside other data
            continue
        counts["fatbins"] += 1
        entry, end, kept = at + header, at + header + size, False
        while entry < end:
            entry_header = struct.unpack_from("<I", data, entry + 4)[0]
            (payload,) = struct.unpack_from("<Q", data, entry + 8)
            (arch,) = struct.unpack_from("<I", data, entry + ARCH_OFFSET)
            start = entry + entry_header
            if arch // 10 == keep_major:
                counts["kept_bytes"] += payload
                kept = True
            else:
                data[start : start + payload] = bytes(payload)
                counts["zeroed_bytes"] += payload
            entry = start + payload
        counts["fatbins_without_kept"] += not kept
        at = end
    return counts


def main(
    library: Annotated[Path, typer.Argument(help="the shared library, rewritten in place")],
    keep_major: Annotated[int, typer.Option(help="the compute capability's major version to keep")] = 9,
) -> None:
    data = bytearray(library.read_bytes())
    counts = slim(data, keep_major)
    if counts["fatbins"] == 0:
        raise typer.BadParameter(f"{library} holds no CUDA fat binary")
    library.write_bytes(data)
    print(
        f"{library.name}: {counts['fatbins']} fat binaries; kept {counts['kept_bytes'] / 1e6:.1f} MB of "
        f"sm_{keep_major}x cubins, zeroed {counts['zeroed_bytes'] / 1e6:.1f} MB; "
        f"{counts['fatbins_without_kept']} had no sm_{keep_major}x cubin"
    )


if __name__ == "__main__":
    typer.run(main)
