"""The LVM report parsers and error mapping, fed with output captured from the real tools
(LVM 2.03.16, Debian 12; see lvm_reports/README.md): on this host in metadata-only mode,
and in the VM lane's guest with device-mapper (snapshots, a thin pool, thin volumes)."""

from pathlib import Path

import pytest
from example_storage.backends.logical import LogicalBackend
from example_storage.errors import (
    AlreadyExists,
    Busy,
    CommandFailed,
    Failed,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotSupported,
)
from example_storage.system import lvm

REPORTS = Path(__file__).parent / "lvm_reports"


def report(name: str) -> str:
    return (REPORTS / f"{name}.json").read_text()


def by_name(items):
    return {i.name: i for i in items}


# -- pvs ----------------------------------------------------------------------------

def test_host_pvs():
    pvs = by_name(lvm.parse_pvs(report("host-pvs")))
    assert list(pvs) == ["/dev/loop1", "/dev/loop2", "/dev/loop3"]
    one = pvs["/dev/loop1"]
    assert one.uuid == "fzaNSG-RGZ8-DnM0-65rb-1Z4s-csJq-ibQ2ow"
    assert one.vg_name == "vgdata" and one.fmt == "lvm2" and one.attr == "a--"
    assert (one.size, one.free, one.used) == (62914560, 8388608, 54525952)
    assert one.size == one.free + one.used
    assert (one.dev_size, one.pe_count, one.pe_alloc_count) == (67108864, 15, 13)
    assert not one.missing
    orphan = pvs["/dev/loop3"]
    assert orphan.vg_name == "" and orphan.pe_count == 0 and orphan.size == orphan.dev_size


def test_vm_pvs():
    pvs = by_name(lvm.parse_pvs(report("vm-pvs")))
    assert pvs["/dev/vda"].used == 134217728 and pvs["/dev/vda"].pe_alloc_count == 32
    assert pvs["/dev/vdb"].free == 260046848
    assert pvs["/dev/vdc"].vg_name == ""


# -- vgs ----------------------------------------------------------------------------

def test_host_vgs():
    [vg] = lvm.parse_vgs(report("host-vgs"))
    assert vg.name == "vgdata" and vg.uuid == "PvKxvd-P6x3-ZEl9-nWls-hpaX-Mo1v-TXw7LT"
    assert (vg.size, vg.free, vg.extent_size) == (125829120, 8388608, 4194304)
    assert (vg.extent_count, vg.free_count) == (30, 2)
    assert vg.free == vg.free_count * vg.extent_size
    assert (vg.pv_count, vg.lv_count, vg.snap_count, vg.missing_pv_count) == (2, 2, 0, 0)
    assert not vg.partial and not vg.exported


def test_vm_vgs():
    [vg] = lvm.parse_vgs(report("vm-vgs"))
    assert vg.name == "vgreal" and vg.lv_count == 6 and vg.snap_count == 1
    assert vg.size - vg.free == 528482304 - 390070272


# -- lvs ----------------------------------------------------------------------------

def test_host_lvs():
    lvs = by_name(lvm.parse_lvs(report("host-lvs")))
    assert list(lvs) == ["big+data.1", "root"]
    root = lvs["root"]
    assert root.size == 40 << 20 and root.uuid == "FJUezS-s5Pc-n72B-dvpO-jScc-GM4T-OCzWYx"
    assert root.path == "/dev/vgdata/root" and root.layout == ("linear",)
    assert root.role == ("public",)
    assert root.active is None          # activation disabled: LVM cannot tell ('X')
    assert not (root.is_snapshot or root.is_thin or root.is_thin_pool or root.is_internal)
    assert root.origin == "" and root.origin_size is None and root.data_percent is None


def test_segment_rows_collapse_to_one_lv():
    lvs = lvm.parse_lvs(report("host-lvs-segtype"))
    assert [lv.name for lv in lvs] == ["big+data.1", "root"]
    assert lvs[0].size == 72 << 20


def test_vm_lvs_kinds():
    lvs = by_name(lvm.parse_lvs(report("vm-lvs")))
    assert set(lvs) == {"data", "data-snap", "inactive", "thin1", "thin1-snap", "tpool"}
    data, snap = lvs["data"], lvs["data-snap"]
    assert data.kind == "o" and data.active is True and not data.is_snapshot
    assert snap.is_snapshot and snap.origin == "data"
    assert snap.size == 12 << 20 and snap.origin_size == 40 << 20
    assert snap.data_percent == 0.0
    assert lvs["inactive"].active is False
    thin, tsnap, pool = lvs["thin1"], lvs["thin1-snap"], lvs["tpool"]
    assert thin.is_thin and not thin.is_snapshot and thin.pool_lv == "tpool"
    assert thin.data_percent == 4.0 and thin.size == 200 << 20
    assert tsnap.is_thin and tsnap.is_snapshot and tsnap.origin == "thin1"
    assert not tsnap.activation_skip      # created with --setactivationskip n
    assert pool.is_thin_pool and pool.is_internal and pool.data_percent == 12.5


def test_vm_hidden_lvs_are_internal():
    lvs = by_name(lvm.parse_lvs(report("vm-lvs-all")))
    internal = {name for name, lv in lvs.items() if lv.is_internal}
    assert internal == {"[lvol0_pmspare]", "tpool", "[tpool_tdata]", "[tpool_tmeta]"}


def test_volumes_from_vm_lvs():
    lvs = by_name(lvm.parse_lvs(report("vm-lvs")))
    snap = LogicalBackend.to_volume(lvs["data-snap"])
    assert snap.type == "block" and snap.key == "BCSDJo-3tgt-5CoO-4owb-SWGr-XXak-cS3XL0"
    assert snap.path == "/dev/vgreal/data-snap"
    assert (snap.capacity, snap.allocation) == (40 << 20, 12 << 20)
    assert snap.backing_store is not None and snap.backing_store.path == "/dev/vgreal/data"
    thin = LogicalBackend.to_volume(lvs["thin1"])
    assert (thin.capacity, thin.allocation) == (200 << 20, 8 << 20)
    assert thin.backing_store is None
    tsnap = LogicalBackend.to_volume(lvs["thin1-snap"])
    assert tsnap.backing_store.path == "/dev/vgreal/thin1"
    plain = LogicalBackend.to_volume(lvs["inactive"])
    assert (plain.capacity, plain.allocation) == (8 << 20, 8 << 20)


def test_empty_and_bad_reports():
    empty = '  {\n      "report": [\n          {\n              "lv": [\n              ]\n'
    empty += "          }\n      ]\n  }\n"
    assert lvm.parse_lvs(empty) == []
    for bad in ("", "not json", '{"report": 3}', '{"report": [{"pv": [1]}]}'):
        with pytest.raises(Failed):
            lvm.parse_pvs(bad)
    with pytest.raises(Failed, match="pv_size"):
        lvm.parse_pvs('{"report": [{"pv": [{"pv_name": "/dev/x", "pv_size": "12.5m"}]}]}')


def test_lvmconfig_value():
    assert lvm.parse_lvmconfig_value("activation=0\n") == "0"
    assert lvm.parse_lvmconfig_value('locking_dir="/run/lock/lvm"\n') == "/run/lock/lvm"
    assert lvm.parse_lvmconfig_value("") is None


# -- names --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vg0", "a+b.c-d_e", "lvol0", "x" * 127, "..."])
def test_valid_names(name):
    assert lvm.validate_vg_name(name) == name
    assert lvm.validate_lv_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".", "..", "a b", "a/b", "ä", "a:b", "x" * 128])
def test_invalid_names(name):
    with pytest.raises(InvalidArgument):
        lvm.validate_vg_name(name)
    with pytest.raises(InvalidArgument):
        lvm.validate_lv_name(name)


@pytest.mark.parametrize("name", ["snapshot1", "pvmove0", "a_tmeta", "x_tdata_y", "b_pmspare",
                                  "c_vorigin", "d_rimage_0", "e_cvol", "f_imeta"])
def test_reserved_lv_names(name):
    with pytest.raises(InvalidArgument, match="reserved"):
        lvm.validate_lv_name(name)
    assert lvm.validate_vg_name(name) == name     # only LV names are restricted


def test_vg_and_lv_name_length_together():
    # measured with LVM 2.03.16: "vga" + 121 characters works, + 122 does not
    assert lvm.validate_lv_name("b" * 121, "vga")
    with pytest.raises(InvalidArgument, match="together"):
        lvm.validate_lv_name("b" * 122, "vga")


def test_size_arg():
    assert lvm.size_arg(4 << 20) == "4194304b"
    assert lvm.size_arg(5000000) == "5000192b"     # LVM wants whole sectors
    with pytest.raises(InvalidArgument):
        lvm.size_arg(0)


# -- errors (stderr captured from the real commands) --------------------------------------

ACT = "  WARNING: Activation disabled. No device-mapper interaction will be attempted.\n"


def _err(stderr: str, argv=("lvcreate",)) -> Exception:
    return lvm.classify_error(CommandFailed(list(argv), 5, stderr), "doing it")


@pytest.mark.parametrize("stderr, kind", [
    (ACT + "  WARNING: Skipping zeroing and wipping, compiled without activation support.\n"
     '  Volume group "vgx" has insufficient free space (16 extents): 1000 required.\n', NoSpace),
    (ACT + "  Insufficient free space: 994 extents needed, but only 16 available\n", NoSpace),
    (ACT + "  Can't create snapshot without using device-mapper kernel driver.\n", NotSupported),
    (ACT + "  WARNING: Skipping zeroing and wipping, compiled without activation support.\n"
     "  WARNING: Logical volume vgx/lvol0 not zeroed.\n"
     "  Can't create thin-pool without using device-mapper kernel driver.\n", NotSupported),
    (ACT + "  A volume group called vga already exists.\n", AlreadyExists),
    (ACT + '  Physical volume "/dev/loop2" still in use\n', Busy),
    (ACT + '  Volume group "nosuch" not found\n  Cannot process volume group nosuch\n',
     NotFound),
    (ACT + '  Failed to find logical volume "vga/x"\n', NotFound),
    (ACT + "  Can't initialize physical volume \"/dev/loop1\" of volume group \"vga\" "
     "without -ff\n  /dev/loop1: physical volume not initialized.\n", Failed),
])
def test_error_mapping(stderr, kind):
    err = _err(stderr)
    assert type(err) is kind
    assert "Activation disabled" not in err.message
    assert "not zeroed" not in err.message
    assert err.message.startswith("doing it: ")


def test_error_without_stderr():
    err = _err("")
    assert type(err) is Failed and "exit status 5" in err.message
