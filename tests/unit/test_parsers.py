"""Pure parsers, fed with output captured from the real tools on Debian 12
(util-linux 2.38 blkid, qemu-img 7.2, Linux mountinfo)."""

import struct

from example_storage.system.blkid import describe_signature, parse_blkid_export
from example_storage.system.mounts import find_mount, mounts_of_source, parse_mountinfo
from example_storage.system.qemu_img import (
    parse_qcow_header,
    parse_qemu_img_info,
    probe_image_format,
)

# blkid -p -o export /dev/loop0   (mkfs.ext4 -L mylabel on a 64 MiB image)
BLKID_EXT4 = """DEVNAME=/dev/loop0
LABEL=mylabel
UUID=971a51bd-02bf-4d41-8eec-e65d2c675a4c
VERSION=1.0
BLOCK_SIZE=1024
TYPE=ext4
USAGE=filesystem
"""

# blkid -p -o export gpt.img   (parted -s gpt.img mklabel gpt mkpart primary ext4 1MiB 33MiB)
BLKID_GPT = """DEVNAME=gpt.img
PTUUID=572f0b14-90b6-4796-9696-055d5f78ee7a
PTTYPE=gpt
"""

# blkid -p -o export dos.img   (parted -s dos.img mklabel msdos)
BLKID_DOS = """DEVNAME=dos.img
PTUUID=d891e08b
PTTYPE=dos
"""

# blkid -p -o export /dev/loop0p1   (the GPT image above, partition added with partx -a)
BLKID_GPT_PARTITION = """DEVNAME=/dev/loop0p1
PART_ENTRY_SCHEME=gpt
PART_ENTRY_NAME=primary
PART_ENTRY_UUID=70d07ddf-40f6-496f-b057-b345cb2f7cd4
PART_ENTRY_TYPE=0fc63daf-8483-4772-8e79-3d69d8477de4
PART_ENTRY_NUMBER=1
PART_ENTRY_OFFSET=2048
PART_ENTRY_SIZE=65536
PART_ENTRY_DISK=7:0
"""

# blkid -p -o export lab.img   (mkfs.ext4 -L 'my "lab" $x'): blkid escapes with backslashes
BLKID_ESCAPED_LABEL = r"""DEVNAME=lab.img
LABEL=my\ \"lab\"\ \$x
UUID=7bf6243e-338c-45ed-8d86-6cc17e729125
VERSION=1.0
BLOCK_SIZE=1024
TYPE=ext4
USAGE=filesystem
"""

# blkid -p -o export xfs.img   (mkfs.xfs on a 320 MiB image)
BLKID_XFS = """DEVNAME=xfs.img
UUID=2388efdc-2c1b-40bb-a492-9ca3835e0b0e
BLOCK_SIZE=512
TYPE=xfs
USAGE=filesystem
"""

# qemu-img info --output=json base.raw   (truncate -s 10M)
QEMU_INFO_RAW = """{
    "virtual-size": 10485760,
    "filename": "base.raw",
    "format": "raw",
    "actual-size": 0,
    "dirty-flag": false
}
"""

# qemu-img create -f qcow2 -F raw -b /tmp/cap/base.raw -o compat=1.1 over.qcow2 20M
QEMU_INFO_QCOW2_BACKING = """{
    "backing-filename-format": "raw",
    "virtual-size": 20971520,
    "filename": "over.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "full-backing-filename": "/tmp/cap/base.raw",
    "backing-filename": "/tmp/cap/base.raw",
    "dirty-flag": false
}
"""

# qemu-img create -f qcow2 -o compat=0.10 old.qcow2 1G
QEMU_INFO_QCOW2_V2 = """{
    "virtual-size": 1073741824,
    "filename": "old.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "0.10",
            "compression-type": "zlib",
            "refcount-bits": 16
        }
    },
    "dirty-flag": false
}
"""

# The first 545 bytes of over.qcow2 above (header, extensions, backing file name).
QCOW2_OVER_HEADER = bytes.fromhex(
    "514649fb00000003000000000000021000000011000000100000000001400000000000000000000100000000"
    "0003000000000000000100000000000100000000000000000000000000000000000000000000000000000000"
    "000000000000000000000004000000700000000000000000e2792aca0000000372617700000000006803f857"
    "0000018000006469727479206269740000000000000000000000000000000000000000000000000000000000"
    "00000000000000000001636f7272757074206269740000000000000000000000000000000000000000000000"
    "000000000000000000000000000265787465726e616c20646174612066696c65000000000000000000000000"
    "000000000000000000000000000000000003636f6d7072657373696f6e207479706500000000000000000000"
    "00000000000000000000000000000000000000000004657874656e646564204c3220656e7472696573000000"
    "00000000000000000000000000000000000000000000000001006c617a7920726566636f756e747300000000"
    "0000000000000000000000000000000000000000000000000000000002006269746d61707300000000000000"
    "000000000000000000000000000000000000000000000000000000000000000002017261772065787465726e"
    "616c206461746100000000000000000000000000000000000000000000000000000000000000000000000000"
    "2f746d702f6361702f626173652e726177"
)

# /proc/self/mountinfo with /dev/loop0 mounted at "/tmp/cap/mnt dir/a<TAB>tab"; the
# last two lines are from a systemd host (optional fields "shared:N", a stacked mount).
MOUNTINFO = "".join((
    r"27 1 254:0 / / rw,relatime"
    r" - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534" "\n",
    r"22 27 0:21 / /proc rw,relatime - proc proc rw" "\n",
    r"23 27 0:22 / /sys rw,relatime - sysfs sysfs rw" "\n",
    r"24 27 0:6 / /dev rw,relatime"
    r" - devtmpfs devtmpfs rw,size=12331664k,nr_inodes=3082916,mode=755" "\n",
    r"25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24682416k" "\n",
    r"42 27 7:0 / /tmp/cap/mnt\040dir/a\011tab rw,relatime - ext4 /dev/loop0 rw" "\n",
    r"61 27 8:2 /srv/data /var/lib/back\134slash rw,nosuid,nodev shared:12 master:3"
    r" - xfs /dev/sda2 rw,attr2,inode64" "\n",
    r"62 42 7:1 / /tmp/cap/mnt\040dir/a\011tab rw,relatime shared:40"
    r" - xfs /dev/loop1 rw" "\n",
))


# -- blkid -------------------------------------------------------------------

def test_blkid_ext4():
    props = parse_blkid_export(BLKID_EXT4)
    assert props["TYPE"] == "ext4"
    assert props["USAGE"] == "filesystem"
    assert props["LABEL"] == "mylabel"
    assert props["UUID"] == "971a51bd-02bf-4d41-8eec-e65d2c675a4c"
    assert describe_signature(props) == "an ext4 filesystem"


def test_blkid_gpt_and_dos():
    gpt = parse_blkid_export(BLKID_GPT)
    assert gpt == {
        "DEVNAME": "gpt.img",
        "PTUUID": "572f0b14-90b6-4796-9696-055d5f78ee7a",
        "PTTYPE": "gpt",
    }
    assert describe_signature(gpt) == "a gpt partition table"
    assert describe_signature(parse_blkid_export(BLKID_DOS)) == "a dos partition table"


def test_blkid_partition_entry_alone_is_not_content():
    props = parse_blkid_export(BLKID_GPT_PARTITION)
    assert props["PART_ENTRY_SCHEME"] == "gpt"
    assert props["PART_ENTRY_NUMBER"] == "1"
    assert props["PART_ENTRY_SIZE"] == "65536"
    assert props["PART_ENTRY_DISK"] == "7:0"
    assert describe_signature(props) is None


def test_blkid_escaped_value():
    props = parse_blkid_export(BLKID_ESCAPED_LABEL)
    assert props["LABEL"] == 'my "lab" $x'


def test_blkid_xfs_and_special_types():
    assert describe_signature(parse_blkid_export(BLKID_XFS)) == "an xfs filesystem"
    assert describe_signature({"TYPE": "LVM2_member", "USAGE": "raid"}) == (
        "an LVM2 physical volume"
    )
    assert describe_signature({"TYPE": "swap", "USAGE": "other"}) == "a swap area"
    assert describe_signature({"TYPE": "btrfs", "USAGE": "filesystem"}) == (
        "a btrfs filesystem"
    )
    assert describe_signature({"AMBIVALENT": "1"}) == "several conflicting signatures"
    assert describe_signature({}) is None


def test_blkid_first_device_only():
    text = BLKID_EXT4 + "\n" + BLKID_GPT
    assert parse_blkid_export(text)["TYPE"] == "ext4"
    assert "PTTYPE" not in parse_blkid_export(text)


# -- qemu-img ----------------------------------------------------------------

def test_qemu_img_info_raw():
    info = parse_qemu_img_info(QEMU_INFO_RAW)
    assert info.format == "raw"
    assert info.virtual_size == 10 * 1024 * 1024
    assert info.actual_size == 0
    assert info.backing_filename is None
    assert info.cluster_size is None
    assert info.compat is None


def test_qemu_img_info_qcow2_with_backing():
    info = parse_qemu_img_info(QEMU_INFO_QCOW2_BACKING)
    assert info.format == "qcow2"
    assert info.virtual_size == 20 * 1024 * 1024
    assert info.actual_size == 200704
    assert info.backing_filename == "/tmp/cap/base.raw"
    assert info.backing_format == "raw"
    assert info.cluster_size == 65536
    assert info.compat == "1.1"


def test_qemu_img_info_qcow2_v2_and_chain_list():
    info = parse_qemu_img_info(QEMU_INFO_QCOW2_V2)
    assert info.compat == "0.10"
    assert info.virtual_size == 1 << 30
    chain = "[" + QEMU_INFO_QCOW2_BACKING + "," + QEMU_INFO_RAW + "]"
    assert parse_qemu_img_info(chain).format == "qcow2"


def test_probe_real_qcow2_header():
    assert probe_image_format(QCOW2_OVER_HEADER) == ("qcow2", 20 * 1024 * 1024)
    header = parse_qcow_header(QCOW2_OVER_HEADER)
    assert header is not None
    assert header.version == 3
    assert header.compat == "1.1"
    assert header.cluster_size == 65536
    assert header.backing_format == "raw"
    assert header.backing_filename(QCOW2_OVER_HEADER) == "/tmp/cap/base.raw"
    assert header.backing_filename(QCOW2_OVER_HEADER[:512]) is None   # not reached


def test_probe_raw_and_synthetic_v2_header():
    assert probe_image_format(b"") == ("raw", None)
    assert probe_image_format(bytes(4096)) == ("raw", None)
    assert probe_image_format(b"QFI") == ("raw", None)
    v2 = struct.pack(">4sIQIIQ", b"QFI\xfb", 2, 0, 0, 16, 5 * 2**30) + bytes(40)
    assert probe_image_format(v2) == ("qcow2", 5 * 2**30)
    header = parse_qcow_header(v2)
    assert header is not None and header.compat == "0.10" and header.backing_format is None


def test_probe_other_formats():
    qed = b"QED\0" + bytes(44) + struct.pack("<Q", 10485760)
    assert probe_image_format(qed) == ("qed", 10485760)
    vmdk = b"KDMV" + bytes(8) + struct.pack("<Q", 20480)
    assert probe_image_format(vmdk) == ("vmdk", 20480 * 512)
    assert probe_image_format(b"vhdxfile" + bytes(8))[0] == "vhdx"


# -- mountinfo ---------------------------------------------------------------

def test_mountinfo_fields_and_escapes():
    entries = parse_mountinfo(MOUNTINFO)
    assert len(entries) == 8
    root = entries[0]
    assert (root.mount_id, root.parent_id, root.major, root.minor) == (27, 1, 254, 0)
    assert root.mount_point == "/"
    assert root.fstype == "ext4" and root.source == "/dev/vda"
    assert "resgid=65534" in root.super_options
    loop = entries[5]
    assert loop.mount_point == "/tmp/cap/mnt dir/a\ttab"
    assert loop.options == ("rw", "relatime")
    assert loop.optional_fields == ()
    shared = entries[6]
    assert shared.root == "/srv/data"
    assert shared.mount_point == "/var/lib/back\\slash"
    assert shared.optional_fields == ("shared:12", "master:3")
    assert shared.fstype == "xfs" and shared.source == "/dev/sda2"


def test_find_mount_takes_the_topmost():
    top = find_mount("/tmp/cap/mnt dir/a\ttab/", MOUNTINFO)
    assert top is not None and top.source == "/dev/loop1"
    assert find_mount("/tmp/cap", MOUNTINFO) is None
    assert find_mount("/", MOUNTINFO).source == "/dev/vda"


def test_mounts_of_source_by_name():
    found = mounts_of_source("/dev/loop0", MOUNTINFO)
    assert [e.mount_id for e in found] == [42]
    assert mounts_of_source("/dev/nonexistent-xyz", MOUNTINFO) == []


def test_malformed_mountinfo_lines_are_skipped():
    assert parse_mountinfo("garbage\n1 2 x:y / / rw - ext4 /dev/a rw\n") == []
