"""The VM lane's pure pieces, on the host: the kernel choice parsed from apt's output, the
initramfs cpio writer (read back by busybox cpio) and the static-binary check."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.vm import lane

# `apt-cache show --no-all-versions linux-image-amd64` on Debian 12 (trimmed, real).
APT_SHOW = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 14
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: amd64
Provides: wireguard-modules (= 1.0.0)
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Description-en: Linux for 64-bit PCs (meta-package)
Description-md5: 0a5dd6e1e2d2d5d5a3ab1c52c2a6b4b1
Section: kernel
Priority: optional
"""


def test_kernel_choice_from_apt_show() -> None:
    assert lane.parse_kernel_depends(APT_SHOW) == ("6.1.0-56-amd64", "6.1.192-2")
    assert lane.parse_kernel_depends("Depends: linux-image-6.1.0-9-amd64\n") == (
        "6.1.0-9-amd64", None)
    assert lane.parse_kernel_depends("Package: linux-image-amd64\n") is None


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (busybox-static)")
def test_cpio_writer_is_read_back_by_busybox(tmp_path: Path) -> None:
    cpio = lane._Cpio()
    cpio.dir("bin")
    cpio.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
    cpio.file("odd", b"x" * 5)  # data that needs padding
    cpio.symlink("bin/sh", "tool")
    archive = tmp_path / "a.cpio"
    archive.write_bytes(cpio.finish())
    out = tmp_path / "out"
    out.mkdir()
    with open(archive, "rb") as f:
        subprocess.run(["busybox", "cpio", "-i", "-d"], stdin=f, cwd=out, check=True,
                       capture_output=True, timeout=30)
    assert (out / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (out / "odd").read_bytes() == b"xxxxx"
    assert (out / "bin" / "sh").readlink() == Path("tool")


def test_static_elf_check() -> None:
    assert not lane._is_static_elf(Path("/bin/ls"))  # dynamically linked
    assert not lane._is_static_elf(Path("/etc/os-release"))  # not ELF
    assert not lane._is_static_elf(Path("/nonexistent"))
    status = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "busybox-static"],
                            capture_output=True, text=True, check=False).stdout
    if status == "installed":
        assert lane._is_static_elf(Path("/bin/busybox"))
