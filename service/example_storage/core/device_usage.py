"""Who uses a block device: mounts, holders, multipath maps, pools (InUse + reasons)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..system import hostwatch, mounts
from .device_model import BlockDevice

if TYPE_CHECKING:
    from .pool import StoragePool


# -- usage ------------------------------------------------------------------------
PoolOf = Callable[[str], "StoragePool | None"]


@dataclass(frozen=True)
class HostUsage:
    """What, beside the devices themselves, tells whether a device is in use."""

    mounts: dict[str, tuple[str, ...]]      # "MAJ:MIN" -> mount points
    swaps: frozenset[str] = frozenset()     # device nodes used as swap
    pool_of: PoolOf | None = None


def read_host_usage(pool_of: PoolOf | None) -> HostUsage:
    by_dev: dict[str, list[str]] = {}
    try:
        entries = mounts.parse_mountinfo(mounts.read_mountinfo())
    except OSError:
        entries = []
    for entry in entries:
        points = by_dev.setdefault(f"{entry.major}:{entry.minor}", [])
        if entry.mount_point not in points:
            points.append(entry.mount_point)
    swaps = frozenset(os.path.realpath(p) for p in hostwatch.read_swaps())
    return HostUsage({k: tuple(v) for k, v in by_dev.items()}, swaps, pool_of)


def compute_usage(devices: dict[str, BlockDevice], host: HostUsage
                  ) -> dict[str, BlockDevice]:
    """Every device with its usage fields filled in (pure but for ``pool_of``)."""
    pools: dict[str, tuple[str, bool]] = {}
    if host.pool_of is not None:
        for dev in devices.values():
            pool = host.pool_of(dev.path)
            if pool is not None:
                pools[dev.name] = (pool.name, pool.active)

    def own_reasons(dev: BlockDevice) -> tuple[list[str], str, str]:
        reasons = [f"mounted at {p}" for p in host.mounts.get(dev.major_minor, ())]
        if dev.path in host.swaps:
            reasons.append("active swap")
        if dev.fs_type in ("LVM2_member", "LVM1_member"):
            reasons.append("LVM physical volume")
        multipath = ""
        for holder_name in dev.holders:
            holder = devices.get(holder_name)
            if holder is not None and holder.type == "multipath":
                multipath = holder.name
                reasons.append(f"member of multipath {holder.display_name}")
            else:
                shown = holder.display_name if holder is not None else holder_name
                reasons.append(f"held by {shown}")
        pool_name = ""
        pool = pools.get(dev.name) or pools.get(dev.parent)
        if pool is not None:
            pool_name, active = pool
            if active:
                reasons.append(f"held by pool {pool_name}")
        return reasons, pool_name, multipath

    result: dict[str, BlockDevice] = {}
    for dev in devices.values():
        reasons, pool_name, multipath = own_reasons(dev)
        if dev.type == "multipath":
            dev = _with_paths_identity(dev, devices)
        result[dev.name] = dataclasses.replace(
            dev, mount_points=host.mounts.get(dev.major_minor, ()),
            in_use_reasons=tuple(reasons), pool=pool_name, multipath=multipath)
    # a disk is in use while one of its partitions is
    for dev in devices.values():
        if dev.parent and result[dev.name].in_use and dev.parent in result:
            parent = result[dev.parent]
            note = f"partition {dev.name} in use"
            if note not in parent.in_use_reasons:
                result[dev.parent] = dataclasses.replace(
                    parent, in_use_reasons=parent.in_use_reasons + (note,))
    return result


def _with_paths_identity(dev: BlockDevice, devices: dict[str, BlockDevice]) -> BlockDevice:
    """A multipath map is the LUN its paths lead to: it has their WWN, serial, vendor,
    model where it has none of its own."""
    paths = [devices[n] for n in dev.slaves if n in devices]
    if not paths:
        return dev
    first = paths[0]
    return dataclasses.replace(
        dev, wwn=dev.wwn or first.wwn, serial=dev.serial or first.serial,
        vendor=dev.vendor or first.vendor, model=dev.model or first.model)


