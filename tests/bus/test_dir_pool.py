"""A dir pool through its whole life, over the bus, as a client sees it."""

import os
import stat

import pytest

from tests.bus.helpers import MANAGER, POOL, VOLUME, dir_pool_xml, raw_volume_xml


async def test_define_build_start_create_resize_delete(svc):
    target = svc.workdir / "images"
    recorder = await svc.recorder()

    xml = dir_pool_xml("images", target, mode="0750")
    pool = await svc.manager("DefinePool", "sa{sv}", xml, {})
    assert pool == "/org/example/Storage/pools/images"
    props = await svc.props(pool, POOL)
    assert props["Name"] == "images" and props["Type"] == "dir"
    assert props["State"] == "inactive" and props["Persistent"] is True
    assert props["Active"] is False and props["Autostart"] is False
    assert props["TargetPath"] == str(target)
    assert (svc.config_dir / "pools" / "images.xml").is_file()
    # announced from the manager's path
    await recorder.wait_for(lambda s: s.member == "InterfacesAdded" and s.body[0] == pool
                            and s.path == "/org/example/Storage")

    await svc.call(pool, POOL, "Build", "a{sv}", {})
    assert target.is_dir()
    assert stat.S_IMODE(target.stat().st_mode) == 0o750

    await svc.call(pool, POOL, "Start", "a{sv}", {})
    props = await svc.props(pool, POOL)
    assert props["State"] == "running" and props["Active"] is True
    st = os.statvfs(target)
    assert props["Capacity"] == st.f_blocks * st.f_frsize
    assert 0 < props["Available"] <= props["Capacity"]
    await recorder.wait_for(lambda s: s.member == "PropertiesChanged" and s.path == pool
                            and s.body[1].get("State") == "running")

    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("disk1.img", "1", "GiB"), {})
    assert vol == "/org/example/Storage/pools/images/volumes/disk1_2eimg"
    vprops = await svc.props(vol, VOLUME)
    path = target / "disk1.img"
    assert vprops["Path"] == str(path) and vprops["Key"] == str(path)
    assert vprops["Capacity"] == 1 << 30 and vprops["Format"] == "raw"
    assert vprops["Pool"] == pool and vprops["Type"] == "file"
    assert path.stat().st_size == 1 << 30
    assert path.stat().st_blocks * 512 < 1 << 20          # sparse
    await recorder.wait_for(lambda s: s.member == "InterfacesAdded" and s.body[0] == vol)

    # grow
    await svc.call(vol, VOLUME, "Resize", "ta{sv}", 2 << 30, {})
    assert path.stat().st_size == 2 << 30
    assert (await svc.props(vol, VOLUME))["Capacity"] == 2 << 30
    await recorder.wait_for(lambda s: s.member == "PropertiesChanged" and s.path == vol
                            and s.body[1].get("Capacity") == 2 << 30)
    # shrinking needs the option
    err = await svc.call_error(vol, VOLUME, "Resize", "ta{sv}", 1 << 30, {})
    assert err.type == "org.example.Storage.Error.InvalidArgument" and "shrink" in err.text
    assert path.stat().st_size == 2 << 30
    await svc.call(vol, VOLUME, "Resize", "ta{sv}", 1 << 30, {"shrink": svc.variant("b", True)})
    assert path.stat().st_size == 1 << 30

    # lookups
    assert await svc.manager("LookupVolumeByPath", "sa{sv}", str(path), {}) == vol
    assert await svc.manager("LookupVolumeByKey", "sa{sv}", str(path), {}) == vol
    assert await svc.manager("LookupPoolByName", "sa{sv}", "images", {}) == pool
    uuid = props["UUID"]
    assert await svc.manager("LookupPoolByUUID", "sa{sv}", uuid.upper(), {}) == pool
    assert await svc.call(pool, POOL, "ListVolumes", "a{sv}", {}) == [vol]
    assert await svc.call(pool, POOL, "LookupVolumeByName", "sa{sv}", "disk1.img", {}) == vol

    # everything in one GetManagedObjects
    objects = await svc.managed_objects()
    assert objects[pool][POOL]["State"] == "running"
    assert objects[vol][VOLUME]["Capacity"] == 1 << 30

    await svc.call(vol, VOLUME, "Delete", "a{sv}", {})
    assert not path.exists()
    await recorder.wait_for(lambda s: s.member == "InterfacesRemoved" and s.body[0] == vol)
    err = await svc.call_error(vol, VOLUME, "GetXMLDesc", "a{sv}", {})
    # dbus-next answers UnknownMethod for a path with no object, dbus-fast UnknownObject
    assert err.type in ("org.freedesktop.DBus.Error.UnknownObject",
                        "org.freedesktop.DBus.Error.UnknownMethod")
    assert await svc.call(pool, POOL, "ListVolumes", "a{sv}", {}) == []
    assert vol not in await svc.managed_objects()

    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert (await svc.props(pool, POOL))["State"] == "inactive"
    await svc.call(pool, POOL, "Delete", "a{sv}", {})
    assert not target.exists()
    await svc.call(pool, POOL, "Undefine", "a{sv}", {})
    assert not (svc.config_dir / "pools" / "images.xml").exists()
    await recorder.wait_for(lambda s: s.member == "InterfacesRemoved" and s.body[0] == pool)
    assert await svc.manager("ListPools", "a{sv}", {}) == []


async def test_qcow2_backing_wipe_and_clone(svc):
    pool = await svc.running_dir_pool("p")
    target = svc.workdir / "p"
    base = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                          raw_volume_xml("base.img", "64", "MiB"), {})
    with open(target / "base.img", "r+b") as f:
        f.seek(4 << 20)
        f.write(b"hello world" * 1000)
    qcow = await svc.call(pool, POOL, "CreateVolume", "sa{sv}", f"""
        <volume><name>child.qcow2</name><capacity unit='MiB'>64</capacity>
          <target><format type='qcow2'/></target>
          <backingStore><path>{target / 'base.img'}</path><format type='raw'/></backingStore>
        </volume>""", {})
    qprops = await svc.props(qcow, VOLUME)
    assert qprops["Format"] == "qcow2" and qprops["Capacity"] == 64 << 20
    assert qprops["BackingStore"] == str(target / "base.img")
    xml = await svc.call(qcow, VOLUME, "GetXMLDesc", "a{sv}", {})
    assert "<backingStore>" in xml and "qcow2" in xml

    # clone keeps the data; into qcow2 converts
    clone = await svc.call(pool, POOL, "CreateVolumeFrom", "soa{sv}",
                           raw_volume_xml("clone.img", "64", "MiB"), base, {})
    assert (target / "clone.img").read_bytes() == (target / "base.img").read_bytes()
    assert (await svc.props(clone, VOLUME))["Allocation"] < 4 << 20   # holes stayed holes
    conv = await svc.call(pool, POOL, "CreateVolumeFrom", "soa{sv}", """
        <volume><name>conv.qcow2</name><capacity unit='MiB'>64</capacity>
          <target><format type='qcow2'/></target></volume>""", base, {})
    assert (await svc.props(conv, VOLUME))["Format"] == "qcow2"
    assert (target / "conv.qcow2").read_bytes()[:4] == b"QFI\xfb"

    await svc.call(base, VOLUME, "Wipe", "a{sv}", {})
    data = (target / "base.img").read_bytes()
    assert len(data) == 64 << 20 and data.count(0) == len(data)
    # the clone is independent of its source
    assert b"hello world" in (target / "clone.img").read_bytes()


async def test_transient_pool_goes_away_on_destroy(svc):
    target = svc.workdir / "t"
    target.mkdir()
    pool = await svc.manager("CreatePool", "sa{sv}", dir_pool_xml("t", target), {})
    props = await svc.props(pool, POOL)
    assert props["State"] == "running" and props["Persistent"] is False
    assert not (svc.config_dir / "pools" / "t.xml").exists()
    assert (svc.run_dir / "pools" / "t.xml").exists()
    err = await svc.call_error(pool, POOL, "SetAutostart", "ba{sv}", True, {})
    assert err.type == "org.example.Storage.Error.InvalidState"
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert await svc.manager("ListPools", "a{sv}", {}) == []
    assert not (svc.run_dir / "pools" / "t.xml").exists()
    assert target.is_dir()          # data untouched


async def test_redefine_and_undefine_running_pool(svc):
    pool = await svc.running_dir_pool("r")
    target = svc.workdir / "r"
    uuid = (await svc.props(pool, POOL))["UUID"]
    new_xml = dir_pool_xml("r", target, mode="0700", uuid=uuid)
    await svc.call(pool, POOL, "Define", "sa{sv}", new_xml, {})
    inactive = await svc.call(pool, POOL, "GetXMLDesc", "a{sv}",
                              {"inactive": svc.variant("b", True)})
    assert "<mode>0700</mode>" in inactive
    # other name or type is refused
    err = await svc.call_error(pool, POOL, "Define", "sa{sv}", dir_pool_xml("other", target), {})
    assert err.type == "org.example.Storage.Error.InvalidArgument"
    await svc.call(pool, POOL, "Undefine", "a{sv}", {})
    props = await svc.props(pool, POOL)
    assert props["Persistent"] is False and props["State"] == "running"
    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert await svc.manager("ListPools", "a{sv}", {}) == []


async def test_capabilities(svc):
    caps = await svc.manager("GetCapabilities", "a{sv}", {})
    assert "<pool type='dir' supported='yes'>" in caps.replace('"', "'")
    assert "<value>qcow2</value>" in caps
    types = (await svc.props("/org/example/Storage", MANAGER))["SupportedPoolTypes"]
    assert {"dir", "fs"} <= set(types)
    assert "mpath" not in types      # a type the service does not operate yet


@pytest.mark.parametrize("autostart", [True, False])
async def test_set_autostart_writes_link(svc, autostart):
    pool = await svc.manager("DefinePool", "sa{sv}", dir_pool_xml("a", svc.workdir / "a"), {})
    await svc.call(pool, POOL, "SetAutostart", "ba{sv}", autostart, {})
    assert (await svc.props(pool, POOL))["Autostart"] is autostart
    assert (svc.config_dir / "pools" / "autostart" / "a.xml").is_symlink() is autostart


async def test_guest_written_image_header_does_not_change_a_raw_volume(svc):
    """A guest can write anything into a raw volume, a qcow2 header whose backing file
    names a host file included. The volume must stay raw: no probe may follow that
    backing file when the volume is listed or cloned."""
    import subprocess

    pool = await svc.running_dir_pool("g")
    target = svc.workdir / "g"
    secret = svc.workdir / "host-secret"
    secret.write_bytes(b"TOP-SECRET" * 1000)
    vol = await svc.call(pool, POOL, "CreateVolume", "sa{sv}",
                         raw_volume_xml("guest.img", "16", "MiB"), {})
    # what the "guest" writes: a qcow2 image backed by the host file, over the raw data
    evil = svc.workdir / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw",
                    str(evil), "16M"], check=True)
    with open(target / "guest.img", "r+b") as f:
        f.write(evil.read_bytes())

    await svc.call(pool, POOL, "Refresh", "a{sv}", {})
    props = await svc.props(vol, VOLUME)
    assert props["Format"] == "raw" and props["BackingStore"] == ""
    clone = await svc.call(pool, POOL, "CreateVolumeFrom", "soa{sv}",
                           raw_volume_xml("copy.img", "16", "MiB"), vol, {})
    data = (target / "copy.img").read_bytes()
    assert b"TOP-SECRET" not in data
    assert data == (target / "guest.img").read_bytes()
    assert (await svc.props(clone, VOLUME))["Format"] == "raw"
