"""Signatures on a block device (``blkid -p -o export``), to refuse overwriting data."""

from __future__ import annotations

import os

from ..errors import CommandFailed, InvalidArgument
from .runner import run_command

# blkid exit codes: 2 = nothing found (or no such device), 8 = ambivalent result.
_NOTHING_FOUND = 2
_AMBIVALENT = 8
AMBIVALENT_KEY = "AMBIVALENT"


def _unescape(value: str) -> str:
    """blkid's export format puts a backslash before shell-special characters."""
    out = []
    chars = iter(value)
    for ch in chars:
        out.append(next(chars, "\\") if ch == "\\" else ch)
    return "".join(out)


def parse_blkid_export(text: str) -> dict[str, str]:
    """KEY=VALUE lines of one device; a blank line ends the first device's block."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if props:
                break
            continue
        key, sep, value = line.partition("=")
        if sep and key:
            props[key.strip()] = _unescape(value)
    return props


async def probe(device: str, *, timeout: float = 30) -> dict[str, str]:
    """Low-level probe of ``device``; {} when it holds no known signature.

    Conflicting signatures (blkid's "ambivalent result") give ``{"AMBIVALENT": "1"}``.
    """
    # blkid says "nothing found" for a missing or unreadable device too: check first.
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidArgument(f"cannot open {device}: {exc.strerror}") from None
    os.close(fd)
    result = await run_command(
        ["blkid", "-p", "-o", "export", "--", device], timeout=timeout, check=False
    )
    if result.returncode == 0:
        return parse_blkid_export(result.stdout)
    if result.returncode == _NOTHING_FOUND:
        return {}
    if result.returncode == _AMBIVALENT:
        return {AMBIVALENT_KEY: "1"}
    raise CommandFailed(result.argv, result.returncode, result.stderr)


_SPECIAL = {
    "LVM2_member": "an LVM2 physical volume",
    "LVM1_member": "an LVM1 physical volume",
    "swap": "a swap area",
    "crypto_LUKS": "a LUKS encrypted volume",
    "linux_raid_member": "a Linux RAID member",
    "isw_raid_member": "an Intel RAID member",
    "ddf_raid_member": "a DDF RAID member",
    "zfs_member": "a ZFS pool member",
    "bcache": "a bcache device",
    "drbd": "a DRBD device",
    "ceph": "a Ceph OSD",
    "BitLocker": "a BitLocker volume",
}
# Names read letter by letter or starting with a vowel sound take "an".
_AN = {"ntfs", "f2fs", "hfs", "hfsplus", "exfat", "ext2", "ext3", "ext4", "xfs", "iso9660",
       "udf", "ocfs2", "sgi", "atari", "mac", "msdos"}


def _article(word: str) -> str:
    return "an" if word.lower() in _AN or word[:1].lower() in "aeiou" else "a"


def describe_signature(props: dict[str, str]) -> str | None:
    """Words for what a device holds ("an ext4 filesystem", "a gpt partition table"), or None.

    A partition entry alone (PART_ENTRY_*) describes where the device sits, not what it
    holds, so it gives None.
    """
    if props.get(AMBIVALENT_KEY):
        return "several conflicting signatures"
    fstype = props.get("TYPE")
    if fstype:
        if fstype in _SPECIAL:
            return _SPECIAL[fstype]
        usage = props.get("USAGE", "filesystem")
        if usage == "filesystem":
            return f"{_article(fstype)} {fstype} filesystem"
        if usage == "raid":
            return f"{_article(fstype)} {fstype} RAID member"
        if usage == "crypto":
            return f"{_article(fstype)} {fstype} encrypted volume"
        return f"{_article(fstype)} {fstype} signature"
    pttype = props.get("PTTYPE")
    if pttype:
        return f"{_article(pttype)} {pttype} partition table"
    return None
