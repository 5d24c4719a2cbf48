"""Peak memory of reading a zip member just under the compression-ratio cap.

A 0.8 MB zip holds one member named like an image, about 160 MB of highly compressible data
(compression ratio just under ``m2ad.archive.DEFAULT_MAX_RATIO`` = 200, so the archive passes
the bomb check).  Reference: ``zipfile.ZipFile.read`` of the member, which is how
``ZipSource.read_bytes`` read members before it streamed them.  Ours: what ``m2ad shard``
does with such a member, ``m2ad.shard._decode`` through ``ZipSource.open`` (a capped stream
that PIL reads from and rejects).  Each is measured in a fresh process as the rise of its
peak resident set size (``ru_maxrss``) over the same process right before the read.

    python benchmarks/zip_member.py [--member-mb 160] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "Bird/Good/000/A000_I01.png"


def build(path: Path, member_bytes: int) -> float:
    """Write the zip and return its compression ratio."""
    rng = np.random.default_rng(0)
    block = bytearray(64 * 1024)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(MEMBER, "w", force_zip64=True) as sink:
        for _ in range(member_bytes // len(block)):
            block[:260] = rng.bytes(260)  # about 340 compressed bytes per 64 KiB block: ratio ~190
            sink.write(block)
    return member_bytes / path.stat().st_size


def measure(path: Path, way: str) -> float:
    """MB by which the peak RSS of a fresh process rises during one read of the member."""
    code = f"""
import resource, sys, zipfile
from m2ad.archive import ZipSource
from m2ad import shard
source = ZipSource([{str(path)!r}])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if {way!r} == "whole":
    data = zipfile.ZipFile({str(path)!r}).read({MEMBER!r})
else:
    try:
        shard._decode(source, {MEMBER!r})
    except Exception:
        pass  # PIL rejects the junk; what matters is how much was held
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--member-mb", type=int, default=152)
    parser.add_argument("--workdir", type=Path, default=None)
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="m2ad-bench-zip-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "member.zip"
    ratio = build(path, arguments.member_mb * 2**20)
    print(f"zip {path.stat().st_size / 1e6:.2f} MB, member {arguments.member_mb * 2**20 / 1e6:.0f} MB, ratio {ratio:.0f}:1")
    whole = measure(path, "whole")
    streamed = measure(path, "stream")
    print(f"peak RSS rise: whole-member read {whole:.1f} MB, m2ad streamed decode {streamed:.1f} MB "
          f"({whole / max(streamed, 0.1):.0f}x less)")


if __name__ == "__main__":
    main()
