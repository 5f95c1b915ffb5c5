"""The 'disk' pool (libvirt's): a whole block device with a partition table; its
volumes are the partitions.

Volume names are the kernel's partition names (loop3p1, sda2), paths and keys
``/dev/<name>``. New partitions start on 1 MiB boundaries and are a whole number of
MiB long (parted's optimal alignment); dos tables get primary partitions only (up to
four), gpt tables as many as the table holds. Only dos and gpt tables are handled.
"""

from __future__ import annotations

import copy
import errno
import functools
import logging
import os
import threading
from collections.abc import Callable

from .. import progress
from ..errors import Busy, Failed, InvalidArgument, InvalidState, NoSpace, NotFound, NotSupported
from ..model.definitions import FreeExtent, PoolDefinition, VolumeDefinition
from ..model.volxml import PARTITION_FORMATS
from ..system import blkid
from ..system import partitions as pt
from ..system.runner import which
from . import block_io, device_safety, overwrite, transfer
from .base import Backend, PoolDevice, PoolStats, RefreshResult
from .block_io import cancellable

log = logging.getLogger(__name__)

MiB = pt.MiB
GPT_MAX_PARTITIONS = 128            # parted's (and everyone's) default gpt table size
DOS_MAX_PRIMARY = 4

# Pool format (libvirt) -> parted's label name; 'unknown' builds dos, like libvirt.
_PARTED_LABEL = {"unknown": "msdos", "dos": "msdos", "gpt": "gpt"}
# sfdisk's label name -> libvirt's pool format.
_POOL_FORMAT = {"dos": "dos", "gpt": "gpt"}


class DiskBackend(Backend):
    type_name = "disk"
    required_tools = ("parted", "sfdisk", "partx", "blkid", "wipefs")
    features = frozenset({
        "build", "start", "stop", "delete", "refresh",
        "create_volume", "delete_volume", "resize_volume", "wipe_volume",
        "upload_volume", "download_volume",
    })
    volume_formats = tuple(f for f in PARTITION_FORMATS if f != "extended")
    pool_formats = ("unknown", "dos", "gpt")
    default_volume_format = "none"
    default_volume_type = "block"

    def missing_tools(self) -> list[str]:
        return [t for t in self.required_tools if which(t) is None]

    # -- the source device ---------------------------------------------------
    @staticmethod
    def source_device(pool: PoolDefinition) -> str:
        """The canonical path of the pool's one whole-disk block device."""
        devices = pool.source.devices
        if len(devices) != 1 or not devices[0].path:
            raise InvalidArgument(f"pool '{pool.name}' needs exactly one source device")
        path = os.path.realpath(device_safety.require_block_device(devices[0].path))
        devno = device_safety.devno_of(path)
        if devno is not None and os.path.exists(
            os.path.join(device_safety.sysfs_dir(devno), "partition")
        ):
            raise InvalidArgument(f"source device {path} is a partition, not a whole disk")
        return path

    @staticmethod
    def _devno(device: str) -> int:
        devno = device_safety.devno_of(device)
        if devno is None:
            raise InvalidArgument(f"source device {device} is not a block device")
        return devno

    @staticmethod
    def _wanted_format(pool: PoolDefinition) -> str:
        fmt = (pool.source.format or "unknown").lower()
        if fmt not in _PARTED_LABEL:
            raise NotSupported(
                f"disk pool format '{fmt}' is not supported (supported: dos, gpt, unknown)"
            )
        return fmt

    async def _table(self, pool: PoolDefinition, device: str) -> pt.PartitionTable:
        """The device's partition table, checked to be one this pool can use."""
        table = await pt.read_table(device)
        if table is None:
            what = blkid.describe_signature(await blkid.probe(device))
            held = f"holds {what}, not a partition table" if what else "has no partition table"
            raise InvalidState(f"{device} {held} (run Build)")
        fmt = _POOL_FORMAT.get(table.label)
        if fmt is None:
            raise NotSupported(
                f"{device} carries a '{table.label}' partition table; only dos and gpt "
                "tables are supported"
            )
        wanted = self._wanted_format(pool)
        if wanted != "unknown" and wanted != fmt:
            raise InvalidState(
                f"{device} carries a {fmt} partition table, but the pool's format is "
                f"{wanted} (run Build with option 'overwrite' to replace it)"
            )
        return table

    async def _sync(self, device: str, table: pt.PartitionTable | None) -> None:
        await pt.sync_kernel(device, self._devno(device), table)

    async def _reread(self, pool: PoolDefinition, device: str) -> pt.PartitionTable:
        """Re-read the table after a change and bring the kernel's nodes in step."""
        table = await self._table(pool, device)
        await self._sync(device, table)
        return table

    # -- pool ----------------------------------------------------------------
    async def is_active(self, pool: PoolDefinition) -> bool:
        try:
            device = self.source_device(pool)
            await self._table(pool, device)
        except (InvalidArgument, InvalidState, NotSupported):
            return False
        return True

    async def build(self, pool: PoolDefinition, overwrite: bool) -> None:
        """A new, empty partition table. Refuses a device that holds a partition table,
        a filesystem or anything else blkid knows unless ``overwrite``; always refuses
        one that is mounted or in use (its partitions included)."""
        device = self.source_device(pool)
        label = _PARTED_LABEL[self._wanted_format(pool)]
        device_safety.check_unused(device)
        what = blkid.describe_signature(await blkid.probe(device))
        if what and not overwrite:
            raise InvalidState(
                f"{device} holds {what}; pass option 'overwrite' to write a new "
                "partition table anyway"
            )
        device_safety.check_unused(device)
        if what:
            # Old signatures (a filesystem at 1 KiB, a backup GPT at the end) would
            # survive a new dos label and confuse every later probe.
            await pt.wipe_signatures(device)
        await self._sync(device, None)              # drop the old partitions' nodes
        await pt.make_label(device, label)
        table = await pt.read_table(device)
        if table is None or _PARTED_LABEL.get(table.label) != label:
            raise Failed(f"parted wrote no {label} partition table on {device}")
        await self._sync(device, table)

    async def start(self, pool: PoolDefinition) -> None:
        device = self.source_device(pool)
        await self._reread(pool, device)

    async def stop(self, pool: PoolDefinition, force: bool = False) -> None:
        return None

    async def delete(self, pool: PoolDefinition) -> None:
        """Erase the partition table of the pool's own device (never while one of its
        partitions is mounted or in use) and drop the kernel's partition nodes."""
        device = self.source_device(pool)
        device_safety.check_unused(device)
        await pt.wipe_signatures(device)
        await self._sync(device, None)

    async def refresh(self, pool: PoolDefinition) -> RefreshResult:
        device = self.source_device(pool)
        table = await self._reread(pool, device)
        layout = await pt.read_layout(device)
        disk = os.path.basename(device)
        volumes = [self._volume(disk, table, p) for p in table.partitions]
        allocation = sum(p.size for p in table.partitions if p.type not in pt.DOS_EXTENDED)
        available = sum(r.size for r in self._usable(table, layout))
        source = copy.deepcopy(pool.source)
        source.format = _POOL_FORMAT[table.label]
        source.devices[0].free_extents = self._free_extents(layout)
        return RefreshResult(
            stats=PoolStats(capacity=layout.size, allocation=allocation, available=available),
            volumes=volumes,
            source=source,
            devices=[PoolDevice(path=device, uuid=table.id, size=layout.size, free=available)],
        )

    @staticmethod
    def _free_extents(layout: pt.PartedLayout) -> list[FreeExtent]:
        """Every free region, as libvirt lists them (the first sector is never free)."""
        return [FreeExtent(start=max(r.start, 512), end=r.end) for r in layout.free]

    def _usable(self, table: pt.PartitionTable, layout: pt.PartedLayout) -> list[pt.FreeRegion]:
        """Free space a new (primary) partition can use: aligned, outside a dos extended
        partition, none at all when the table has no free slot."""
        if self._next_number(table) is None:
            return []
        ext = table.extended()
        regions = [pt.aligned(r) for r in layout.free if pt.outside(r, ext)]
        return [r for r in regions if r is not None]

    @staticmethod
    def _next_number(table: pt.PartitionTable) -> int | None:
        used = {p.number for p in table.partitions}
        limit = DOS_MAX_PRIMARY if table.label == "dos" else GPT_MAX_PARTITIONS
        return pt.lowest_free_number(used, limit)

    @staticmethod
    def _volume(disk: str, table: pt.PartitionTable, part: pt.Partition) -> VolumeDefinition:
        name = pt.partition_name(disk, part.number)
        path = f"/dev/{name}"
        allocation = part.size
        if part.type in pt.DOS_EXTENDED and table.label == "dos":
            allocation = sum(p.size for p in table.logicals())
        return VolumeDefinition(
            name=name, type="block", key=path, path=path, capacity=part.size,
            allocation=allocation, format=pt.volume_format(table.label, part.type),
        )

    # -- volumes -------------------------------------------------------------
    def _find(self, table: pt.PartitionTable, device: str, vol: VolumeDefinition
              ) -> pt.Partition:
        disk = os.path.basename(device)
        for part in table.partitions:
            if pt.partition_name(disk, part.number) == vol.name:
                return part
        raise NotFound(f"{device} has no partition '{vol.name}'")

    async def create_volume(
        self, pool: PoolDefinition, vol: VolumeDefinition
    ) -> VolumeDefinition:
        device = self.source_device(pool)
        table = await self._table(pool, device)
        fmt = (vol.format or self.default_volume_format or "none").lower()
        if fmt == "extended":
            raise NotSupported("creating extended (and logical) partitions is not supported")
        if vol.encryption_format:
            raise NotSupported("disk pools do not support encrypted volumes")
        ptype = pt.partition_type_for(table.label, fmt)
        if ptype is None:
            raise InvalidArgument(
                f"volume format '{fmt}' is not a {table.label} partition type "
                f"(supported: {', '.join(self.volume_formats)})"
            )
        number = self._next_number(table)
        if number is None:
            if table.label == "dos":
                raise NotSupported(
                    f"the dos partition table of {device} has no free primary slot "
                    "(logical partitions are not supported)"
                )
            raise NoSpace(f"the partition table of {device} is full")
        expected = pt.partition_name(os.path.basename(device), number)
        if vol.name != expected:
            raise InvalidArgument(
                f"invalid partition name '{vol.name}', expected '{expected}' (a disk pool's "
                "volumes are named after the partition the kernel will create)"
            )
        size = pt.align_up(vol.capacity or 0, MiB)
        if size <= 0:
            raise InvalidArgument("the volume needs a capacity greater than 0")
        layout = await pt.read_layout(device)
        usable = self._usable(table, layout)
        region = pt.best_fit(usable, size)
        if region is None:
            largest = max((r.size for r in usable), default=0)
            raise NoSpace(
                f"no free extent of {size} bytes on {device} (the largest usable one has "
                f"{largest} bytes)"
            )
        await pt.add_partition(device, region.start, size)
        after = await pt.read_table(device)
        part = after.by_number(number) if after else None
        if part is None or part.start != region.start:
            raise Failed(f"parted did not create partition {number} at byte {region.start} "
                         f"of {device}")
        try:
            if part.type != ptype:
                await pt.set_type(device, number, ptype)
            table = await self._reread(pool, device)
        except BaseException:
            await self._undo_create(device, number)       # nothing half-made stays
            raise
        return self._volume(os.path.basename(device), table, self._find(table, device, vol))

    async def _undo_create(self, device: str, number: int) -> None:
        try:
            await pt.remove_partition(device, number)
            await self._sync(device, await pt.read_table(device))
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning("could not remove partition %d of %s again: %s", number, device, exc)

    async def delete_volume(self, pool: PoolDefinition, vol: VolumeDefinition) -> None:
        device = self.source_device(pool)
        table = await self._table(pool, device)
        await self._sync(device, table)
        part = self._find(table, device, vol)
        if part.type in pt.DOS_EXTENDED and table.label == "dos" and table.logicals():
            raise Busy(f"extended partition {vol.name} still holds logical partitions; "
                       "delete them first")
        device_safety.check_unused(f"/dev/{vol.name}")
        await pt.remove_partition(device, part.number)
        await self._reread(pool, device)

    async def resize_volume(
        self, pool: PoolDefinition, vol: VolumeDefinition, capacity: int, shrink: bool
    ) -> VolumeDefinition:
        device = self.source_device(pool)
        table = await self._table(pool, device)
        await self._sync(device, table)
        part = self._find(table, device, vol)
        if table.label == "dos" and (part.type in pt.DOS_EXTENDED or part.number > 4):
            raise NotSupported("resizing extended or logical partitions is not supported")
        size = pt.align_up(capacity, MiB)
        if size < part.size and not shrink:
            raise InvalidArgument(f"{capacity} is smaller than {vol.name}'s size {part.size}; "
                                  "pass option 'shrink' to cut data off its end")
        if size > part.size:
            layout = await pt.read_layout(device)
            after = next((r for r in layout.free if r.start == part.end), None)
            limit = after.end if after else part.end
            if part.start + size > limit:
                # The aligned size does not fit; the exact (sector-rounded) one may.
                size = pt.align_up(capacity, table.sector_size)
            if part.start + size > limit:
                raise NoSpace(
                    f"{vol.name} can grow by at most {limit - part.end} bytes (the free "
                    f"space directly after it), not to {capacity} bytes"
                )
        elif size < part.size:
            device_safety.check_unused(f"/dev/{vol.name}")
        if size != part.size:
            await pt.set_size(device, part.number, size // table.sector_size)
            table = await self._reread(pool, device)
        return self._volume(os.path.basename(device), table, self._find(table, device, vol))

    async def wipe_volume(self, pool: PoolDefinition, vol: VolumeDefinition,
                          algorithm: str = overwrite.ZERO) -> None:
        """Overwrite the whole partition with zeroes (or ``algorithm``'s bytes), never
        while it is mounted or in use."""
        device = self.source_device(pool)
        table = await self._table(pool, device)
        await self._sync(device, table)
        part = self._find(table, device, vol)
        if part.type in pt.DOS_EXTENDED and table.label == "dos":
            raise NotSupported("an extended partition cannot be wiped (wipe its logical "
                               "partitions instead)")
        node = f"/dev/{vol.name}"
        device_safety.check_unused(node)
        await cancellable(_overwrite_partition, node, part, self._devno(device), algorithm,
                          progress=progress.reporter())

    async def _partition_node(self, pool: PoolDefinition, vol: VolumeDefinition
                              ) -> tuple[str, Callable[[int], None]]:
        """The partition's node, and a check that an fd opened on it is that partition
        of the pool's disk as its table describes it."""
        device = self.source_device(pool)
        table = await self._table(pool, device)
        await self._sync(device, table)
        part = self._find(table, device, vol)
        if part.type in pt.DOS_EXTENDED and table.label == "dos":
            raise NotSupported("an extended partition holds no data of its own")
        node = f"/dev/{vol.name}"
        disk_devno = self._devno(device)
        return node, functools.partial(_check_partition, node=node, part=part,
                                       disk_devno=disk_devno)

    async def upload_volume(self, pool: PoolDefinition, vol: VolumeDefinition, fd: int,
                            offset: int, length: int) -> int:
        """Write into the partition (never while it is mounted or in use)."""
        node, verify = await self._partition_node(pool, vol)
        device_safety.check_unused(node)
        return await block_io.in_thread(transfer.upload_to_path, node, fd, offset, length,
                                        exclusive=True, verify=verify,
                                        what=f"uploading into {node}")

    async def download_volume(self, pool: PoolDefinition, vol: VolumeDefinition, fd: int,
                              offset: int, length: int) -> int:
        node, verify = await self._partition_node(pool, vol)
        return await block_io.in_thread(transfer.download_from_path, node, fd, offset, length,
                                        verify=verify, what=f"downloading {node}")


def _check_partition(fd: int, *, node: str, part: pt.Partition, disk_devno: int) -> None:
    kernel = {k.number: k for k in pt.kernel_partitions(disk_devno)}.get(part.number)
    if (kernel is None or os.fstat(fd).st_rdev != kernel.devno
            or kernel.start != part.start or kernel.size != part.size):
        raise Failed(f"{node} is not partition {part.number} of the pool's device "
                     "as its table describes it")


def _overwrite_partition(node: str, part: pt.Partition, disk_devno: int, algorithm: str, *,
                         cancel: threading.Event, progress: overwrite.Progress) -> None:
    """Write zeroes (or ``algorithm``'s bytes) over ``node``, after checking it is
    exactly ``part`` of our disk."""
    try:
        fd = os.open(node, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise Busy(f"{node} is in use") from None
        raise Failed(f"cannot open {node}: {exc.strerror}") from None
    try:
        kernel = {k.number: k for k in pt.kernel_partitions(disk_devno)}.get(part.number)
        if (kernel is None or os.fstat(fd).st_rdev != kernel.devno
                or kernel.start != part.start or kernel.size != part.size):
            raise Failed(f"{node} is not partition {part.number} of the pool's device "
                         "as its table describes it")
        if algorithm == overwrite.ZERO:   # BLKZEROOUT where the kernel offers it
            zeroer = block_io.RangeZeroer(fd, keep_allocation=True, cancel=cancel)
            zeroer.zero(0, part.size, progress, 0, part.size)
            os.fsync(fd)
        else:
            overwrite.fill_fd(fd, 0, part.size, algorithm, cancel=cancel, progress=progress)
    except OSError as exc:
        raise Failed(f"cannot wipe {node}: {exc.strerror}") from None
    finally:
        os.close(fd)

