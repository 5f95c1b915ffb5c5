"""A 'scsi' pool on a real SCSI host: scsi_debug's (runs in the VM lane's guest).

The pool's volumes are the host's disk LUNs; LUNs that come and go on the host are
announced as Pool.LunsChanged (after the volumes' ObjectManager signals) with no Refresh
call: the kernel's uevents of the LUNs' block devices make the pool re-list. A LUN made by
an admin's rescan (more LUNs configured, then "- - -" written to the host's scan file),
one deleted through sysfs, a second host (scsi_debug's add_host) that is not the pool's
and says nothing to it; Refresh rescans the host itself. A host that does not exist is a
clear NotFound at Start.
"""

from __future__ import annotations

import asyncio
import glob
import os
import time
from pathlib import Path

import pytest

from tests.bus.helpers import POOL, VOLUME
from tests.vm.guest import run

pytestmark = pytest.mark.vm
E = "org.example.Storage.Error."
SCSI_DEBUG = Path("/sys/bus/pseudo/drivers/scsi_debug")
MiB = 1 << 20


def scsi_pool_xml(name: str, host: str) -> str:
    return (f"<pool type='scsi'><name>{name}</name><source><adapter type='scsi_host' "
            f"name='{host}'/></source><target><path>/dev/disk/by-path</path></target></pool>")


def debug_hosts() -> list[str]:
    return sorted(os.path.basename(h) for h in glob.glob(f"{SCSI_DEBUG}/adapter*/host*"))


def blocks_of(host: str) -> dict[str, str]:
    """'unit:C:T:L' -> kernel name of the block device, for each LUN of ``host``."""
    number = host.removeprefix("host")
    out = {}
    for path in glob.glob(f"/sys/bus/scsi/devices/{number}:*:*:*/block/*"):
        address = path.split("/")[-3]
        _, c, t, lun = address.split(":")
        out[f"unit:{c}:{t}:{lun}"] = os.path.basename(path)
    return out


def wait_for(what, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


async def volumes_by_name(svc, pool: str) -> dict[str, dict]:
    out = {}
    for path in await svc.call(pool, POOL, "ListVolumes", "a{sv}", {}):
        props = await svc.props(path, VOLUME)
        out[props["Name"]] = {**props, "path": path}
    return out


@pytest.fixture
def scsi_debug():
    """scsi_debug with one host, one target, two 16 MiB LUNs; unloaded after the test
    (after the daemon: guest_svc is set up first, torn down last)."""
    run(["sh", "-c", "rmmod scsi_debug 2>/dev/null; true"])
    run(["modprobe", "sd_mod"])     # no udevd in the guest: nothing loads it by modalias
    run(["modprobe", "scsi_debug", "dev_size_mb=16", "num_tgts=1", "max_luns=2"])
    (host,) = wait_for(debug_hosts)
    wait_for(lambda: len(blocks_of(host)) == 2)
    yield host
    run(["sh", "-c", "rmmod scsi_debug 2>/dev/null; true"])


async def test_scsi_pool_follows_its_hosts_luns(guest_svc, scsi_debug):
    svc = guest_svc
    host = scsi_debug
    err = await svc.manager_error("CreatePool", "sa{sv}", scsi_pool_xml("none", "host99"), {})
    assert err.type == E + "NotFound" and "host99" in err.text, err.text

    pool = await svc.manager("DefinePool", "sa{sv}", scsi_pool_xml("sd", host), {})
    await svc.call(pool, POOL, "Start", "a{sv}", {})
    blocks = blocks_of(host)
    vols = await volumes_by_name(svc, pool)
    assert sorted(vols) == ["unit:0:0:0", "unit:0:0:1"]
    for name, vol in vols.items():
        assert vol["Capacity"] == 16 * MiB and vol["Type"] == "block"
        assert vol["Path"] == f"/dev/{blocks[name]}"      # no udevd: no /dev/disk/by-path
        wwid = Path(f"/sys/block/{blocks[name]}/device/wwid").read_text().strip()
        assert wwid == f"naa.{vol['Key']}"
    props = await svc.props(pool, POOL)
    assert props["State"] == "running" and props["Capacity"] == 32 * MiB
    rec = await svc.recorder()

    # an admin configures a third LUN and rescans the host: announced, no Refresh call
    (SCSI_DEBUG / "max_luns").write_text("3")
    Path(f"/sys/class/scsi_host/{host}/scan").write_text("- - -")
    sig = await rec.wait_for(lambda s: s.member == "LunsChanged", timeout=60)
    assert sig.path == pool
    added, removed = sig.body
    assert removed == [] and len(added) == 1 and added[0].endswith("/unit_3a0_3a0_3a2")
    assert rec.matching(lambda s: s.member == "InterfacesAdded" and s.body[0] == added[0]
                        and rec.signals.index(s) < rec.signals.index(sig))
    assert (await svc.props(added[0], VOLUME))["Path"] == f"/dev/{blocks_of(host)['unit:0:0:2']}"
    assert (await svc.props(pool, POOL))["Capacity"] == 48 * MiB

    # the LUN is deleted through sysfs: announced as removed
    n = len(rec.signals)
    Path(f"/sys/block/{blocks_of(host)['unit:0:0:2']}/device/delete").write_text("1")
    sig = await rec.wait_for(lambda s: s.member == "LunsChanged", timeout=60, start=n)
    assert sig.body == [[], [added[0]]]
    assert rec.matching(lambda s: s.member == "InterfacesRemoved" and s.body[0] == added[0])

    # another host with its own disks: Device objects, but nothing for this pool
    n = len(rec.signals)
    (SCSI_DEBUG / "add_host").write_text("1")
    other = wait_for(lambda: [h for h in debug_hosts() if h != host])[0]
    wait_for(lambda: len(blocks_of(other)) == 3)
    await rec.wait_for(lambda s: s.member == "DeviceAdded", timeout=60, start=n)
    await asyncio.sleep(2)
    assert not rec.matching(lambda s: s.member == "LunsChanged"
                            and rec.signals.index(s) >= n)
    assert sorted(await volumes_by_name(svc, pool)) == ["unit:0:0:0", "unit:0:0:1"]

    assert "Refresh" not in svc.daemon.log()

    # Refresh rescans the host: the third LUN (still configured) is back, announced
    n = len(rec.signals)
    await svc.call(pool, POOL, "Refresh", "a{sv}", {})
    sig = await rec.wait_for(lambda s: s.member == "LunsChanged", timeout=60, start=n)
    assert sig.body[1] == [] and [p.rsplit("/", 1)[-1] for p in sig.body[0]] == [
        "unit_3a0_3a0_3a2"]
    assert sorted(await volumes_by_name(svc, pool)) == ["unit:0:0:0", "unit:0:0:1",
                                                        "unit:0:0:2"]

    await svc.call(pool, POOL, "Destroy", "a{sv}", {})
    assert (await svc.props(pool, POOL))["State"] == "inactive"
    assert len(blocks_of(host)) == 3, "Destroy must leave the host's LUNs alone"
