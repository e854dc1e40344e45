"""guest.py - builds the boot-sector guest (tests/tools/guest/writer.S).

Tests may run in parallel, so the binary is built in a private temporary
directory and renamed into a cache directory keyed by the source's hash: a
rename is atomic, so a reader sees either no file or a complete one.
"""
import hashlib
import os
import subprocess
import tempfile

from . import util

GUEST_SRC = os.path.join(util.SOURCE_DIR, "tests", "tools", "guest", "writer.S")


def boot_sector():
    """Path of the built 512-byte boot sector (built on first use)."""
    with open(GUEST_SRC, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    cache = os.path.join(os.environ.get("QB_BUILD_DIR") or tempfile.gettempdir(), "qbtest-guest")
    os.makedirs(cache, exist_ok=True)
    out = os.path.join(cache, "writer-%s.bin" % digest)
    if os.path.exists(out):
        return out
    work = tempfile.mkdtemp(prefix="build-", dir=cache)
    try:
        obj = os.path.join(work, "writer.o")
        binary = os.path.join(work, "writer.bin")
        subprocess.run(["as", "--32", "-o", obj, GUEST_SRC], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary",
                        "-o", binary, obj], check=True)
        size = os.path.getsize(binary)
        if size != 512:
            raise RuntimeError("guest boot sector is %d bytes, want 512" % size)
        os.rename(binary, out)
    finally:
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)
    return out


def boot_image(path):
    """Writes a private boot disk at path: the boot sector padded to 64 KiB
    (ide-hd refuses read-only drives, so VMs cannot share one image)."""
    with open(boot_sector(), "rb") as f:
        sector = f.read()
    with open(path, "wb") as f:
        f.write(sector + b"\0" * (65536 - len(sector)))
    return path
