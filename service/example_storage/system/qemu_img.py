"""qemu-img wrappers, its JSON output, and a fast image-header probe.

The header probe lets a directory listing tell qcow2 from raw (and read a qcow2's
virtual size and backing file) without spawning qemu-img for every file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from ..errors import Failed, InvalidArgument
from .runner import run_command

QCOW_MAGIC = b"QFI\xfb"
HEADER_PROBE_BYTES = 4096
_QCOW2_EXT_END = 0
_QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
_QCOW2_EXT_DATA_FILE = 0x44415441


@dataclass
class ImageInfo:
    format: str
    virtual_size: int
    actual_size: int | None = None
    backing_filename: str | None = None
    backing_format: str | None = None
    cluster_size: int | None = None
    compat: str | None = None
    full_backing_filename: str | None = None
    encrypted: bool = False
    dirty: bool = False


def parse_qemu_img_info(json_text: str) -> ImageInfo:
    """Parse ``qemu-img info --output=json`` (a list from --backing-chain: its first image)."""
    try:
        data = json.loads(json_text)
    except ValueError as exc:
        raise Failed(f"qemu-img info gave unreadable output: {exc}") from None
    if isinstance(data, list):
        if not data:
            raise Failed("qemu-img info gave an empty list")
        data = data[0]
    if not isinstance(data, dict) or "format" not in data or "virtual-size" not in data:
        raise Failed("qemu-img info output lacks format or virtual-size")
    specific = data.get("format-specific") or {}
    spec_data = specific.get("data") or {}
    return ImageInfo(
        format=str(data["format"]),
        virtual_size=int(data["virtual-size"]),
        actual_size=data.get("actual-size"),
        backing_filename=data.get("backing-filename"),
        backing_format=data.get("backing-filename-format"),
        cluster_size=data.get("cluster-size"),
        compat=spec_data.get("compat"),
        full_backing_filename=data.get("full-backing-filename"),
        encrypted=bool(data.get("encrypted", False)),
        dirty=bool(data.get("dirty-flag", False)),
    )


# -- header probe ------------------------------------------------------------

@dataclass
class QcowHeader:
    version: int
    virtual_size: int
    cluster_size: int | None
    backing_offset: int
    backing_size: int
    backing_format: str | None = None
    external_data_file: bool = False

    @property
    def format(self) -> str:
        return "qcow" if self.version == 1 else "qcow2"

    @property
    def compat(self) -> str | None:
        return {2: "0.10", 3: "1.1"}.get(self.version)

    def backing_filename(self, data: bytes) -> str | None:
        """The backing file name if ``data`` (the file's first bytes) reaches it."""
        if not self.backing_offset or not self.backing_size:
            return None
        end = self.backing_offset + self.backing_size
        if end > len(data):
            return None
        return data[self.backing_offset:end].decode("utf-8", "surrogateescape")


def parse_qcow_header(data: bytes) -> QcowHeader | None:
    """The qcow/qcow2 header at the start of ``data``, or None if it is not one."""
    if len(data) < 32 or data[:4] != QCOW_MAGIC:
        return None
    version, backing_offset, backing_size = struct.unpack_from(">IQI", data, 4)
    (size,) = struct.unpack_from(">Q", data, 24)
    if version == 1:
        return QcowHeader(1, size, None, backing_offset, backing_size)
    if version not in (2, 3):
        return None
    (cluster_bits,) = struct.unpack_from(">I", data, 20)
    cluster_size = 1 << cluster_bits if 9 <= cluster_bits <= 30 else None
    header = QcowHeader(version, size, cluster_size, backing_offset, backing_size)
    ext_offset = 72
    if version == 3 and len(data) >= 104:
        (ext_offset,) = struct.unpack_from(">I", data, 100)
    # Header extensions: (type u32, length u32, data padded to 8 bytes), until type 0.
    while ext_offset + 8 <= len(data):
        ext_type, ext_len = struct.unpack_from(">II", data, ext_offset)
        if ext_type == _QCOW2_EXT_END:
            break
        body = data[ext_offset + 8 : ext_offset + 8 + ext_len]
        if ext_type == _QCOW2_EXT_BACKING_FORMAT:
            header.backing_format = body.decode("ascii", "replace")
        elif ext_type == _QCOW2_EXT_DATA_FILE:
            header.external_data_file = True
        ext_offset += 8 + ((ext_len + 7) & ~7)
    return header


def probe_image_format(first_bytes: bytes) -> tuple[str, int | None]:
    """(format, virtual size if the header tells it) from a file's first bytes.

    Anything not recognised is ('raw', None): the caller uses the file size.
    """
    data = first_bytes
    qcow = parse_qcow_header(data)
    if qcow is not None:
        return qcow.format, qcow.virtual_size
    if data[:4] == b"QED\0" and len(data) >= 56:
        return "qed", struct.unpack_from("<Q", data, 48)[0]
    if len(data) >= 0x178 and data[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "vdi", struct.unpack_from("<Q", data, 0x170)[0]
    if data[:4] == b"KDMV" and len(data) >= 20:
        return "vmdk", struct.unpack_from("<Q", data, 12)[0] * 512
    if data[:21] == b"# Disk DescriptorFile":
        return "vmdk", None
    if data[:8] == b"conectix" and len(data) >= 56:
        return "vpc", struct.unpack_from(">Q", data, 48)[0]
    if data[:8] == b"vhdxfile":
        return "vhdx", None
    if data[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        return "parallels", None
    return "raw", None


# -- commands ----------------------------------------------------------------

def _size_arg(size: int) -> str:
    if size < 0:
        raise InvalidArgument(f"size must not be negative: {size}")
    return str(size)


async def info(path: str, fmt: str | None = None, *, timeout: float = 60) -> ImageInfo:
    """``qemu-img info``; pass ``fmt`` whenever it is known (never let qemu guess)."""
    argv = ["qemu-img", "info", "--output=json", "--force-share"]
    if fmt:
        argv += ["-f", fmt]
    argv += ["--", path]
    result = await run_command(argv, timeout=timeout)
    return parse_qemu_img_info(result.stdout)


async def create(
    path: str,
    fmt: str,
    size: int,
    backing: str | None = None,
    backing_fmt: str | None = None,
    preallocation: str | None = None,
    compat: str | None = None,
    *,
    options: dict[str, str] | None = None,
    timeout: float = 600,
) -> None:
    """``qemu-img create -f FMT [-b BACKING -F BACKING_FMT] [-o ...] PATH SIZE``."""
    opts = dict(options or {})
    if preallocation:
        opts["preallocation"] = preallocation
    if compat:
        opts["compat"] = compat
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if backing:
        if not backing_fmt:
            raise InvalidArgument("a backing file needs its format")
        argv += ["-b", backing, "-F", backing_fmt]
    for key, value in opts.items():
        if "," in key or "," in str(value) or "=" in key:
            raise InvalidArgument(f"invalid qemu-img option {key}={value}")
        argv += ["-o", f"{key}={value}"]
    argv += ["--", path, _size_arg(size)]
    await run_command(argv, timeout=timeout)


async def resize(
    path: str,
    size: int,
    fmt: str,
    shrink: bool = False,
    *,
    preallocation: str | None = None,
    timeout: float = 600,
) -> None:
    argv = ["qemu-img", "resize", "-q", "-f", fmt]
    if shrink:
        argv.append("--shrink")
    if preallocation:
        argv.append(f"--preallocation={preallocation}")
    argv += ["--", path, _size_arg(size)]
    await run_command(argv, timeout=timeout)


async def convert(
    src: str,
    src_fmt: str,
    dst: str,
    dst_fmt: str,
    *,
    options: dict[str, str] | None = None,
    timeout: float = 3600,
) -> None:
    """``qemu-img convert -f SRC_FMT -O DST_FMT [-o ...] SRC DST`` (sparse output)."""
    argv = ["qemu-img", "convert", "-q", "-f", src_fmt, "-O", dst_fmt]
    for key, value in (options or {}).items():
        if "," in key or "," in str(value) or "=" in key:
            raise InvalidArgument(f"invalid qemu-img option {key}={value}")
        argv += ["-o", f"{key}={value}"]
    argv += ["--", src, dst]
    await run_command(argv, timeout=timeout)


async def compare(a: str, b: str, a_fmt: str, b_fmt: str, *, timeout: float = 600) -> bool:
    """True when the two images have the same guest-visible content."""
    result = await run_command(
        ["qemu-img", "compare", "-q", "-f", a_fmt, "-F", b_fmt, "--", a, b],
        timeout=timeout, check=False,
    )
    if result.returncode in (0, 1):
        return result.returncode == 0
    raise Failed(f"qemu-img compare failed: {result.stderr.strip()}")
