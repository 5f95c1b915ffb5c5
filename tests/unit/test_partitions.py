"""Parsers and arithmetic of system/partitions.py, fed with output captured from the real
tools on Debian 12 (util-linux 2.38 sfdisk, GNU parted 3.5) on loop devices."""

import pytest
from example_storage.errors import Failed
from example_storage.system import partitions as pt

MiB = 1024 * 1024

# sfdisk -J /dev/loop0   (256 MiB; parted -s mklabel gpt, mkpart primary 1MiB 33MiB,
# mkpart primary linux-swap 33MiB 65MiB, mkpart primary 100MiB 120MiB + set 3 lvm on,
# mkpart primary fat32 120MiB 130MiB, mkpart primary 130MiB 140MiB + set 5 raid on)
SFDISK_GPT = """{
   "partitiontable": {
      "label": "gpt",
      "id": "90ABD04F-0E40-4597-B391-68EB1445A5A2",
      "device": "/dev/loop0",
      "unit": "sectors",
      "firstlba": 34,
      "lastlba": 524254,
      "sectorsize": 512,
      "partitions": [
         {
            "node": "/dev/loop0p1",
            "start": 2048,
            "size": 65536,
            "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "uuid": "8AF1F537-1C41-4084-93D7-808465824327",
            "name": "primary"
         },{
            "node": "/dev/loop0p2",
            "start": 67584,
            "size": 65536,
            "type": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
            "uuid": "EC7A1D1C-0578-43C0-86DB-8C9FBAD354D5",
            "name": "primary"
         },{
            "node": "/dev/loop0p3",
            "start": 204800,
            "size": 40960,
            "type": "E6D6D379-F507-44C2-A23C-238F2A3DF928",
            "uuid": "565A0EDF-0927-4D88-86A1-38995B5B80A8",
            "name": "primary"
         },{
            "node": "/dev/loop0p4",
            "start": 245760,
            "size": 20480,
            "type": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            "uuid": "388E2901-AFA2-4389-BB57-F00B9405151D",
            "name": "primary"
         },{
            "node": "/dev/loop0p5",
            "start": 266240,
            "size": 20480,
            "type": "A19D880F-05FC-4D3B-A006-743F0F84911E",
            "uuid": "C8512118-35A7-40AF-AB24-D702DD3C973E",
            "name": "primary"
         }
      ]
   }
}
"""

# parted -s -m /dev/loop0 unit B print free   (the same disk)
PARTED_GPT = """BYT;
/dev/loop0:268435456B:loopback:512:512:gpt:Loopback device:;
1:17408B:1048575B:1031168B:free;
1:1048576B:34603007B:33554432B::primary:;
2:34603008B:68157439B:33554432B::primary:swap;
1:68157440B:104857599B:36700160B:free;
3:104857600B:125829119B:20971520B::primary:lvm;
4:125829120B:136314879B:10485760B::primary:msftdata;
5:136314880B:146800639B:10485760B::primary:raid;
1:146800640B:268418559B:121617920B:free;
"""

# sfdisk -J /dev/loop0   (256 MiB; parted -s mklabel msdos, primary linux-swap 1-10MiB,
# primary fat32 10-20MiB, primary fat16 20-30MiB, extended 40-200MiB, logical ext2 41-60MiB
# + set 5 lvm on, logical 70-80MiB)
SFDISK_DOS = """{
   "partitiontable": {
      "label": "dos",
      "id": "0x4ca1c6b8",
      "device": "/dev/loop0",
      "unit": "sectors",
      "sectorsize": 512,
      "partitions": [
         {
            "node": "/dev/loop0p1",
            "start": 2048,
            "size": 18432,
            "type": "82"
         },{
            "node": "/dev/loop0p2",
            "start": 20480,
            "size": 20480,
            "type": "c"
         },{
            "node": "/dev/loop0p3",
            "start": 40960,
            "size": 20480,
            "type": "e"
         },{
            "node": "/dev/loop0p4",
            "start": 81920,
            "size": 327680,
            "type": "f"
         },{
            "node": "/dev/loop0p5",
            "start": 83968,
            "size": 38912,
            "type": "8e"
         },{
            "node": "/dev/loop0p6",
            "start": 143360,
            "size": 20480,
            "type": "83"
         }
      ]
   }
}
"""

# parted -s -m /dev/loop0 unit B print free   (the same disk)
PARTED_DOS = """BYT;
/dev/loop0:268435456B:loopback:512:512:msdos:Loopback device:;
1:1024B:1048575B:1047552B:free;
1:1048576B:10485759B:9437184B:::swap;
2:10485760B:20971519B:10485760B:::lba;
3:20971520B:31457279B:10485760B:::lba;
1:31457280B:41943039B:10485760B:free;
4:41943040B:209715199B:167772160B:::lba;
1:41944064B:42823679B:879616B:free;
5:42991616B:62914559B:19922944B:::lvm;
1:62914560B:73374719B:10460160B:free;
6:73400320B:83886079B:10485760B:::;
1:83886080B:209715199B:125829120B:free;
1:209715200B:268435455B:58720256B:free;
"""

# sfdisk -J /dev/loop0   (parted -s mklabel msdos, no partitions)
SFDISK_DOS_EMPTY = """{
   "partitiontable": {
      "label": "dos",
      "id": "0xaa7ccab9",
      "device": "/dev/loop0",
      "unit": "sectors",
      "sectorsize": 512
   }
}
"""

# parted -s -m /dev/loop0 unit B print free   (the same disk)
PARTED_DOS_EMPTY = """BYT;
/dev/loop0:268435456B:loopback:512:512:msdos:Loopback device:;
1:1024B:268435455B:268434432B:free;
"""

# sfdisk -J /dev/loop4   (64 MiB, losetup -b 4096; gpt, partitions 1-9MiB, 20-30MiB)
SFDISK_GPT_4K = """{
   "partitiontable": {
      "label": "gpt",
      "id": "FCA855F1-5563-42CB-9C0A-FFED50BC25F0",
      "device": "/dev/loop4",
      "unit": "sectors",
      "firstlba": 6,
      "lastlba": 16378,
      "sectorsize": 4096,
      "partitions": [
         {
            "node": "/dev/loop4p1",
            "start": 256,
            "size": 2048,
            "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "uuid": "E740C657-3300-44F3-90A7-2FEBEDBB0A85",
            "name": "primary"
         },{
            "node": "/dev/loop4p2",
            "start": 5120,
            "size": 2560,
            "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "uuid": "041A7707-2C70-4467-B7F1-8D279A524C59",
            "name": "primary"
         }
      ]
   }
}
"""

# parted -s -m /dev/loop4 unit B print free   (the same disk)
PARTED_GPT_4K = """BYT;
/dev/loop4:67108864B:loopback:4096:4096:gpt:Loopback device:;
1:24576B:1048575B:1024000B:free;
1:1048576B:9437183B:8388608B::primary:;
1:9437184B:20971519B:11534336B:free;
2:20971520B:31457279B:10485760B::primary:;
1:31457280B:67088383B:35631104B:free;
"""

# sfdisk -J /dev/loop0   (parted -s mklabel gpt, no partitions)
SFDISK_GPT_EMPTY = """{
   "partitiontable": {
      "label": "gpt",
      "id": "4B40F8A5-9B02-4BE1-8F30-77B51C6FFDCE",
      "device": "/dev/loop0",
      "unit": "sectors",
      "firstlba": 34,
      "lastlba": 524254,
      "sectorsize": 512
   }
}
"""

# parted -s -m /dev/loop0 unit B print free   (the same disk)
PARTED_GPT_EMPTY = """BYT;
/dev/loop0:268435456B:loopback:512:512:gpt:Loopback device:;
1:17408B:268418559B:268401152B:free;
"""

# parted -s -m /dev/loop0 unit B print free   (mkfs.ext4 on the whole device: parted's
# 'loop' label, one pseudo-partition holding the filesystem; exit status 0)
PARTED_EXT4_WHOLE_DISK = """BYT;
/dev/loop0:268435456B:loopback:512:512:loop:Loopback device:;
1:0B:268435455B:268435456B:ext4::;
"""

# stderr of sfdisk -J and parted print on a device without a partition table (exit 1)
SFDISK_NO_TABLE = "sfdisk: /dev/loop0: does not contain a recognized partition table\n"
PARTED_NO_TABLE = "Error: /dev/loop0: unrecognised disk label\n"


# -- sfdisk -J ------------------------------------------------------------------------------

def test_sfdisk_gpt():
    table = pt.parse_sfdisk_json(SFDISK_GPT)
    assert table.label == "gpt" and table.sector_size == 512
    assert table.id == "90ABD04F-0E40-4597-B391-68EB1445A5A2"
    assert table.first_usable == 34 * 512
    assert table.last_usable_end == 524255 * 512
    assert [p.number for p in table.partitions] == [1, 2, 3, 4, 5]
    p1, p2, p3 = table.partitions[:3]
    assert (p1.start, p1.size, p1.end) == (1 * MiB, 32 * MiB, 33 * MiB)
    assert p1.node == "/dev/loop0p1" and p1.name == "primary"
    assert p1.uuid == "8AF1F537-1C41-4084-93D7-808465824327"
    assert (p3.start, p3.size) == (100 * MiB, 20 * MiB)
    formats = [pt.volume_format("gpt", p.type) for p in table.partitions]
    assert formats == ["linux", "linux-swap", "linux-lvm", "fat32", "linux-raid"]
    assert table.extended() is None and table.logicals() == []
    assert table.by_number(2) is p2 and table.by_number(9) is None


def test_sfdisk_dos_with_extended_and_logicals():
    table = pt.parse_sfdisk_json(SFDISK_DOS)
    assert table.label == "dos" and table.id == "0x4ca1c6b8"
    assert table.first_usable is None and table.last_usable_end is None
    types = {p.number: p.type for p in table.partitions}
    assert types == {1: "82", 2: "c", 3: "e", 4: "f", 5: "8e", 6: "83"}
    formats = [pt.volume_format("dos", p.type) for p in table.partitions]
    assert formats == ["linux-swap", "fat32", "fat16", "extended", "linux-lvm", "linux"]
    ext = table.extended()
    assert ext is not None and ext.number == 4
    assert (ext.start, ext.size) == (40 * MiB, 160 * MiB)
    assert [p.number for p in table.logicals()] == [5, 6]


def test_sfdisk_empty_tables():
    dos = pt.parse_sfdisk_json(SFDISK_DOS_EMPTY)
    assert dos.label == "dos" and dos.partitions == []
    gpt = pt.parse_sfdisk_json(SFDISK_GPT_EMPTY)
    assert gpt.label == "gpt" and gpt.partitions == []


def test_sfdisk_4k_sectors_are_converted_to_bytes():
    table = pt.parse_sfdisk_json(SFDISK_GPT_4K)
    assert table.sector_size == 4096
    assert [(p.start, p.size) for p in table.partitions] == [(1 * MiB, 8 * MiB),
                                                             (20 * MiB, 10 * MiB)]
    assert table.last_usable_end == 16379 * 4096


@pytest.mark.parametrize("text", ["", "not json", "{}", '{"partitiontable": {}}',
                                  '{"partitiontable": {"label": "gpt", "unit": "bytes"}}'])
def test_sfdisk_garbage_is_a_clear_error(text):
    with pytest.raises(Failed, match="sfdisk"):
        pt.parse_sfdisk_json(text)


def test_sfdisk_entry_without_number():
    text = SFDISK_GPT.replace('"/dev/loop0p1"', '"/dev/weird"')
    with pytest.raises(Failed, match="partition number"):
        pt.parse_sfdisk_json(text)


def test_no_table_messages():
    assert pt.is_no_table_error(SFDISK_NO_TABLE)
    assert pt.is_no_table_error(PARTED_NO_TABLE)
    assert not pt.is_no_table_error("sfdisk: cannot open /dev/x: No such file or directory")


# -- parted -m ------------------------------------------------------------------------------

def test_parted_gpt_free_regions():
    layout = pt.parse_parted_machine(PARTED_GPT, "/dev/loop0")
    assert layout.size == 256 * MiB and layout.label == "gpt"
    assert layout.logical_sector_size == layout.physical_sector_size == 512
    assert layout.free == [
        pt.FreeRegion(17408, 1 * MiB),
        pt.FreeRegion(65 * MiB, 100 * MiB),
        pt.FreeRegion(140 * MiB, 268418560),       # up to the backup GPT
    ]
    assert sorted(layout.partitions) == [1, 2, 3, 4, 5]
    assert layout.partitions[3] == pt.FreeRegion(100 * MiB, 120 * MiB)


def test_parted_free_space_agrees_with_sfdisk_gaps():
    """Free regions are exactly the gaps between sfdisk's partitions in the usable area."""
    table = pt.parse_sfdisk_json(SFDISK_GPT)
    layout = pt.parse_parted_machine(PARTED_GPT, "/dev/loop0")
    edges = [table.first_usable, *[x for p in table.partitions for x in (p.start, p.end)],
             table.last_usable_end]
    gaps = [pt.FreeRegion(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b > a]
    assert layout.free == gaps


def test_parted_dos_lists_logical_free_space_too():
    layout = pt.parse_parted_machine(PARTED_DOS, "/dev/loop0")
    assert layout.label == "msdos"
    assert layout.free[0] == pt.FreeRegion(1024, 1 * MiB)
    assert pt.FreeRegion(30 * MiB, 40 * MiB) in layout.free
    assert pt.FreeRegion(200 * MiB, 256 * MiB) == layout.free[-1]
    ext = pt.parse_sfdisk_json(SFDISK_DOS).extended()
    inside = [r for r in layout.free if not pt.outside(r, ext)]
    assert inside == [pt.FreeRegion(41944064, 42823680), pt.FreeRegion(60 * MiB, 73374720),
                      pt.FreeRegion(80 * MiB, 200 * MiB)]


def test_parted_empty_and_4k():
    assert pt.parse_parted_machine(PARTED_DOS_EMPTY, "/dev/loop0").free == [
        pt.FreeRegion(1024, 256 * MiB)]
    assert pt.parse_parted_machine(PARTED_GPT_EMPTY, "/dev/loop0").free == [
        pt.FreeRegion(17408, 268418560)]
    layout = pt.parse_parted_machine(PARTED_GPT_4K, "/dev/loop4")
    assert layout.logical_sector_size == 4096 and layout.size == 64 * MiB
    assert layout.free == [pt.FreeRegion(24576, 1 * MiB), pt.FreeRegion(9 * MiB, 20 * MiB),
                           pt.FreeRegion(30 * MiB, 67088384)]


def test_parted_whole_disk_filesystem_is_no_free_space():
    layout = pt.parse_parted_machine(PARTED_EXT4_WHOLE_DISK, "/dev/loop0")
    assert layout.label == "loop" and layout.free == []
    assert layout.partitions == {1: pt.FreeRegion(0, 256 * MiB)}


def test_parted_device_path_with_colons():
    text = PARTED_GPT_EMPTY.replace("/dev/loop0", "/dev/disk/by-path/pci-0000:00:1f.2-ata-1")
    layout = pt.parse_parted_machine(text, "/dev/disk/by-path/pci-0000:00:1f.2-ata-1")
    assert layout.size == 256 * MiB and layout.label == "gpt"


@pytest.mark.parametrize("text", ["", "BYT;\n", "BYT;\n/dev/other:1B:x:512:512:gpt:m:;\n",
                                  "BYT;\n/dev/loop0:manyB:x:512:512:gpt:m:;\n"])
def test_parted_garbage_is_a_clear_error(text):
    with pytest.raises(Failed, match="parted"):
        pt.parse_parted_machine(text, "/dev/loop0")


# -- sysfs, naming, types -------------------------------------------------------------------

def test_sysfs_partitions_and_mismatch():
    # cat /sys/block/loop0/loop0p1/{partition,start,size,dev} after parted mkpart 1MiB 2MiB
    kernel = pt.parse_sysfs_partitions({
        "loop0p1": {"partition": "1", "start": "2048", "size": "2048", "dev": "259:0"},
        "queue": {"partition": "x"},               # not a partition: skipped
    })
    assert [(k.number, k.name, k.start, k.size) for k in kernel] == [(1, "loop0p1", MiB, MiB)]
    table = pt.PartitionTable("gpt", "", 512, [pt.Partition(1, MiB, MiB, pt.GPT_LINUX)])
    assert pt.kernel_mismatch(table, kernel) == []
    grown = pt.PartitionTable("gpt", "", 512, [pt.Partition(1, MiB, 2 * MiB, pt.GPT_LINUX),
                                               pt.Partition(2, 4 * MiB, MiB, pt.GPT_LINUX)])
    assert pt.kernel_mismatch(grown, kernel) == ["partition 1 has the wrong extent",
                                                 "partition 2 is missing"]
    assert pt.kernel_mismatch(None, kernel) == ["partition 1 is not in the table"]


def test_kernel_gives_extended_partitions_one_kib():
    table = pt.parse_sfdisk_json(SFDISK_DOS)
    # the kernel (BLKPG from parted, or partx) makes loop0p4 two sectors long
    kernel = [pt.KernelPartition(p.number, f"loop0p{p.number}", p.start,
                                 1024 if p.number == 4 else p.size)
              for p in table.partitions]
    assert pt.kernel_mismatch(table, kernel) == []


@pytest.mark.parametrize(("disk", "number", "name"), [
    ("loop3", 1, "loop3p1"), ("sda", 2, "sda2"), ("nvme0n1", 3, "nvme0n1p3"),
    ("vdb", 12, "vdb12"), ("mmcblk0", 1, "mmcblk0p1"),
])
def test_partition_name(disk, number, name):
    assert pt.partition_name(disk, number) == name


def test_type_mapping_round_trips():
    for label in ("dos", "gpt"):
        for fmt in ("linux", "linux-swap", "linux-lvm", "linux-raid", "fat32"):
            assert pt.volume_format(label, pt.partition_type_for(label, fmt)) == fmt
        assert pt.volume_format(label, pt.partition_type_for(label, "none")) == "linux"
        assert pt.partition_type_for(label, "extended") is None
    assert pt.volume_format("dos", pt.partition_type_for("dos", "fat16")) == "fat16"
    assert pt.volume_format("dos", "0x07") == "none"          # NTFS: no libvirt name
    assert pt.volume_format("dos", "0x8E") == "linux-lvm"
    assert pt.volume_format("gpt", pt.GPT_LVM.lower()) == "linux-lvm"
    assert pt.volume_format("gpt", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B") == "none"
    assert pt.volume_format("sun", "83") == "none"
    assert pt.partition_type_for("sun", "linux") is None


# -- free space arithmetic ------------------------------------------------------------------

def test_alignment_and_best_fit():
    assert pt.aligned(pt.FreeRegion(17408, MiB)) is None
    assert pt.aligned(pt.FreeRegion(17408, 268418560)) == pt.FreeRegion(MiB, 255 * MiB)
    assert pt.align_up(30 * MiB + 1, MiB) == 31 * MiB and pt.align_up(MiB, MiB) == MiB
    regions = [pt.FreeRegion(0, 10 * MiB), pt.FreeRegion(20 * MiB, 24 * MiB),
               pt.FreeRegion(30 * MiB, 35 * MiB)]
    assert pt.best_fit(regions, 4 * MiB) == regions[1]        # the smallest that fits
    assert pt.best_fit(regions, 5 * MiB) == regions[2]
    assert pt.best_fit(regions, 11 * MiB) is None


def test_lowest_free_number():
    assert pt.lowest_free_number(set(), 4) == 1
    assert pt.lowest_free_number({1, 3}, 4) == 2
    assert pt.lowest_free_number({1, 2, 3, 4}, 4) is None
