"""The 'logical' pool: an LVM volume group; its logical volumes are the pool's volumes.

Pool XML: ``<source><device path=.../>...<name>VG</name><format type='lvm2'/></source>``
(the VG name defaults to the pool name; the target path is always ``/dev/VG``).

Two worlds, told apart at run time by ``lvm.activation_possible()``:

- **a real kernel** (device-mapper present, activation enabled): Start/Destroy activate
  and deactivate the VG; LVs have device nodes, so Wipe, clone (CreateVolumeFrom),
  snapshots, thin volumes and pvmove work.
- **metadata only** (no device-mapper, or ``global { activation = 0 }``): LVM still
  creates, resizes and removes PVs, VGs and LVs in the on-disk metadata. Start only
  checks that the VG exists with the defined devices (activation is a no-op), and a
  running pool stays "running" across restarts as long as its VG exists. What needs
  device nodes or device-mapper fails with NotSupported, before anything is changed:
  Wipe, CreateVolumeFrom, Snapshot, thin volumes, and removing a PV that still holds data
  (pvmove is never run here: LVM would leave a half-done move in the metadata).

Safety rules: a device that is mounted or in use is never touched; one that holds a
filesystem, a partition table or an LVM PV (of another VG or none) is only taken with
``overwrite``. Delete refuses a VG that still holds LVs (it names them); deleting a
volume refuses one that has snapshots (LVM would remove them along with it).
"""

from __future__ import annotations

import copy
import logging
import os

from .. import progress
from ..errors import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    InvalidState,
    NoSpace,
    NotFound,
    NotSupported,
    StorageError,
)
from ..model.definitions import (
    BackingStore,
    PoolDefinition,
    PoolSource,
    SourceDevice,
    VolumeDefinition,
)
from ..system import blkid, lvm
from ..system.runner import run_command, which
from . import block_io, device_safety, overwrite, transfer
from .base import Backend, PoolDevice, PoolStats, RefreshResult

log = logging.getLogger(__name__)

WIPEFS_TIMEOUT = 120.0
DISCARD_TIMEOUT = 3600.0
COPY_MIN_RATE = 10 * 1024 * 1024       # bytes/s assumed for qemu-img convert timeouts

_FEATURES = frozenset({
    "build", "start", "stop", "delete", "refresh", "create_volume", "delete_volume",
    "resize_volume", "find_sources", "add_devices", "remove_device",
})
# These write or read through LV device nodes: only where device-mapper exists.
_DM_FEATURES = frozenset({"wipe_volume", "snapshot_volume", "create_volume_from",
                          "upload_volume", "download_volume"})

_NO_DM = ("LVM cannot activate volumes on this host (no device-mapper in the kernel, or "
          "activation disabled in lvm.conf): it manages metadata only")


def same_device(a: str, b: str) -> bool:
    """Do two paths name the same block device (by device number, else by real path)?"""
    da, db = device_safety.devno_of(a), device_safety.devno_of(b)
    if da is not None and db is not None:
        return da == db
    return os.path.realpath(a) == os.path.realpath(b)


def _check_volume_options(vol: VolumeDefinition) -> None:
    if vol.encryption_format:
        raise NotSupported("encrypted logical volumes are not supported")
    if vol.format not in (None, "raw"):
        raise InvalidArgument(f"logical volumes have no format '{vol.format}'")


class LogicalBackend(Backend):
    type_name = "logical"
    required_tools = ("lvm", "blkid")
    pool_formats = ("unknown", "lvm2")
    default_volume_type = "block"

    @property  # type: ignore[override]
    def features(self) -> frozenset[str]:
        """Everything here; Wipe, clone and Snapshot only with device-mapper."""
        if lvm.kernel_has_device_mapper():
            return _FEATURES | _DM_FEATURES
        return _FEATURES

    # -- helpers ---------------------------------------------------------------
    @staticmethod
    def vg_name(pool: PoolDefinition) -> str:
        return lvm.validate_vg_name(pool.source.name or pool.name)

    @staticmethod
    def _checked_devices(paths: list[str]) -> list[str]:
        """Absolute block device paths, each named once."""
        out: list[str] = []
        for path in paths:
            device_safety.require_block_device(path)
            if any(same_device(path, seen) for seen in out):
                raise InvalidArgument(f"device {path} is named twice")
            out.append(path)
        return out

    def _source_devices(self, pool: PoolDefinition) -> list[str]:
        paths = [d.path for d in pool.source.devices]
        if not paths:
            raise InvalidArgument(f"pool '{pool.name}' names no source device to build on")
        return self._checked_devices(paths)

    @staticmethod
    async def _group(vg: str) -> lvm.VolumeGroup:
        group = await lvm.find_vg(vg)
        if group is None:
            raise InvalidState(f"volume group '{vg}' does not exist (Build the pool first)")
        return group

    @staticmethod
    async def _members(vg: str) -> list[lvm.PhysicalVolume]:
        return [pv for pv in await lvm.pvs() if pv.vg_name == vg]

    @staticmethod
    async def _lv(vg: str, name: str) -> lvm.LogicalVolume:
        for lv in await lvm.lvs(vg):
            if lv.name == name and not lv.is_internal:
                return lv
        raise NotFound(f"volume group '{vg}' has no logical volume '{name}'")

    async def _require_devices(self, what: str) -> None:
        if not await lvm.activation_possible():
            raise NotSupported(f"{what} needs device-mapper: {_NO_DM}")

    @staticmethod
    def _require_node(lv: lvm.LogicalVolume) -> str:
        if not os.path.exists(lv.path):
            raise InvalidState(f"{lv.path} does not exist: logical volume '{lv.name}' is not "
                               "active (Start the pool)")
        return lv.path

    async def _check_new_devices(self, devices: list[str], overwrite: bool) -> bool:
        """Refuse devices in use (always) or holding data (unless ``overwrite``).
        Returns True when a device is a PV of another VG (pvcreate then needs -ff)."""
        known = await lvm.pvs()
        force = False
        for dev in devices:
            device_safety.check_unused(dev)
            pv = next((p for p in known if not p.missing and same_device(p.name, dev)), None)
            if pv is not None:
                what = (f"a physical volume of volume group '{pv.vg_name}'" if pv.vg_name
                        else "an LVM physical volume")
                if not overwrite:
                    raise InvalidState(
                        f"{dev} is {what}; pass option 'overwrite' to reuse it anyway")
                force = force or bool(pv.vg_name)
                continue
            what = blkid.describe_signature(await blkid.probe(dev))
            if what and not overwrite:
                raise InvalidState(
                    f"{dev} holds {what}; pass option 'overwrite' to make it an LVM "
                    "physical volume anyway")
        return force

    async def _make_pvs(self, devices: list[str], overwrite: bool) -> None:
        force = await self._check_new_devices(devices, overwrite)
        for dev in devices:
            device_safety.check_unused(dev)     # again, right before writing
        if overwrite and which("wipefs"):
            # Also drops signatures pvcreate would leave (a backup GPT at the end, ...).
            await run_command(["wipefs", "-a", "-q", "--", *devices], timeout=WIPEFS_TIMEOUT)
        await lvm.pvcreate(devices, overwrite=overwrite, force=force)

    @staticmethod
    async def _undo_pvs(devices: list[str]) -> None:
        try:
            await lvm.pvremove(devices)
        except StorageError as e:
            log.warning("could not remove the new physical volumes %s: %s", devices, e)

    # -- pool ------------------------------------------------------------------
    async def is_active(self, pool: PoolDefinition) -> bool:
        """The VG exists and, where LVM can activate, it is not deactivated (it has no
        LVs, or at least one of them is active)."""
        try:
            vg = self.vg_name(pool)
            if await lvm.find_vg(vg) is None:
                return False
            if not await lvm.activation_possible():
                return True
            lvs = [lv for lv in await lvm.lvs(vg) if not lv.is_internal]
        except StorageError as e:
            log.warning("cannot tell whether volume group of pool %s is active: %s",
                        pool.name, e)
            return False
        return not lvs or any(lv.active for lv in lvs)

    async def build(self, pool: PoolDefinition, overwrite: bool) -> None:
        """pvcreate every source device, then vgcreate; refuses devices that are in use
        (always) or hold data (unless ``overwrite``).

        When the VG exists already and holds some of the defined devices, Build extends
        it onto the others (pvcreate + vgextend: "Define with more devices, then Build").
        It never takes PVs out (that is RemoveDevice) and refuses (AlreadyExists) a VG of
        that name on none of the defined devices, or one that has them all already.
        """
        vg = self.vg_name(pool)
        devices = self._source_devices(pool)
        if await lvm.find_vg(vg) is not None:
            members = [pv.name for pv in await self._members(vg) if not pv.missing]
            new = [d for d in devices if not any(same_device(d, m) for m in members)]
            if len(new) == len(devices):
                raise AlreadyExists(f"volume group '{vg}' exists already, on other devices "
                                    f"({', '.join(members) or 'none present'})")
            if not new:
                raise AlreadyExists(f"volume group '{vg}' exists already on these devices")
            await self._extend(vg, new, overwrite)
            return
        await self._make_pvs(devices, overwrite)
        try:
            await lvm.vgcreate(vg, devices)
        except BaseException:
            await self._undo_pvs(devices)
            raise

    async def _check_source(self, pool: PoolDefinition) -> lvm.VolumeGroup:
        """The VG, checked to hold every defined device and to be complete."""
        vg = self.vg_name(pool)
        group = await self._group(vg)
        members = await self._members(vg)
        for dev in pool.source.devices:
            if not any(not pv.missing and same_device(pv.name, dev.path) for pv in members):
                raise InvalidState(
                    f"{dev.path} is not a physical volume of volume group '{vg}'")
        if group.partial or group.missing_pv_count:
            raise InvalidState(
                f"volume group '{vg}' misses {group.missing_pv_count} physical volume(s)")
        return group

    async def start(self, pool: PoolDefinition) -> None:
        """Check the VG, then activate it (``vgchange -ay``) where LVM can."""
        await self._check_source(pool)
        if await lvm.activation_possible():
            await lvm.vgchange_activate(self.vg_name(pool), True)

    async def stop(self, pool: PoolDefinition, force: bool = False) -> None:
        """Deactivate the VG (``vgchange -an``; Busy while an LV is open) where LVM can."""
        vg = self.vg_name(pool)
        if await lvm.find_vg(vg) is None:
            return
        if await lvm.activation_possible():
            await lvm.vgchange_activate(vg, False)

    async def delete(self, pool: PoolDefinition) -> None:
        """vgremove, then pvremove of exactly that VG's PVs. Refused (Busy) while the VG
        holds logical volumes: they are data the caller did not name."""
        vg = self.vg_name(pool)
        await self._group(vg)
        lvs = await lvm.lvs(vg)
        if lvs:
            names = ", ".join(sorted(lv.name for lv in lvs))
            raise Busy(f"volume group '{vg}' still holds logical volumes ({names}); "
                       "delete them first")
        members = await self._members(vg)
        await lvm.vgremove(vg)
        present = [pv.name for pv in members if not pv.missing]
        if present:
            await lvm.pvremove(present)

    async def stats(self, pool: PoolDefinition) -> PoolStats:
        group = (await lvm.vgs(self.vg_name(pool)))[0]
        return PoolStats(capacity=group.size, allocation=group.size - group.free,
                         available=group.free)

    async def refresh(self, pool: PoolDefinition) -> RefreshResult:
        vg = self.vg_name(pool)
        group = await self._group(vg)
        members = await self._members(vg)
        lvs = await lvm.lvs(vg)
        source = copy.deepcopy(pool.source)
        source.name = vg
        source.format = pool.source.format or "lvm2"
        source.devices = [SourceDevice(pv.name) for pv in members if not pv.missing]
        return RefreshResult(
            stats=PoolStats(capacity=group.size, allocation=group.size - group.free,
                            available=group.free),
            volumes=[self.to_volume(lv) for lv in lvs if not lv.is_internal],
            source=source,
            devices=[PoolDevice(path=pv.name, uuid=pv.uuid, size=pv.size, free=pv.free)
                     for pv in members],
        )

    @staticmethod
    def to_volume(lv: lvm.LogicalVolume) -> VolumeDefinition:
        """A volume as the service shows it: key = LV UUID, path = /dev/VG/LV.

        Thick snapshot: capacity = its origin's size, allocation = its copy-on-write
        area. Thin volume: allocation = the part of it the pool has provided.
        """
        capacity = allocation = lv.size
        if lv.kind in ("s", "S"):
            capacity = lv.origin_size or lv.size
        elif lv.is_thin and lv.data_percent is not None:
            allocation = min(lv.size, int(lv.size * lv.data_percent / 100))
        vol = VolumeDefinition(name=lv.name, type="block", key=lv.uuid, path=lv.path,
                               capacity=capacity, allocation=allocation)
        if lv.origin:
            vol.backing_store = BackingStore(path=f"/dev/{lv.vg_name}/{lv.origin}")
        return vol

    async def volume_info(self, pool: PoolDefinition, name: str) -> VolumeDefinition:
        return self.to_volume(await self._lv(self.vg_name(pool), name))

    # -- sources and devices -----------------------------------------------------
    async def find_sources(self, hint: PoolSource | None) -> list[PoolSource]:
        """Every VG LVM sees, with its (present) PVs. ``hint`` is not used."""
        groups: dict[str, list[str]] = {}
        for pv in await lvm.pvs():
            if pv.vg_name and not pv.missing:
                groups.setdefault(pv.vg_name, []).append(pv.name)
        return [
            PoolSource(name=vg, format="lvm2", devices=[SourceDevice(p) for p in paths])
            for vg, paths in sorted(groups.items())
        ]

    async def add_devices(self, pool: PoolDefinition, devices: list[str], overwrite: bool
                          ) -> None:
        """pvcreate + vgextend, with Build's safety rules."""
        vg = self.vg_name(pool)
        if not devices:
            raise InvalidArgument("no devices to add")
        devs = self._checked_devices(list(devices))
        await self._group(vg)
        for pv in await self._members(vg):
            for dev in devs:
                if not pv.missing and same_device(pv.name, dev):
                    raise AlreadyExists(f"{dev} is already a physical volume of '{vg}'")
        await self._extend(vg, devs, overwrite)

    async def _extend(self, vg: str, devices: list[str], overwrite: bool) -> None:
        await self._make_pvs(devices, overwrite)
        try:
            await lvm.vgextend(vg, devices)
        except BaseException:
            await self._undo_pvs(devices)
            raise

    async def remove_device(self, pool: PoolDefinition, device: str) -> None:
        """Move the device's extents to the VG's other PVs (pvmove) when it holds data
        and they have room, then vgreduce and pvremove it.

        Refused with NoSpace when the other PVs cannot take its data, NotSupported when it
        holds data and LVM cannot move it here (no device-mapper), InvalidState for the
        VG's last PV (Delete the pool instead).
        """
        vg = self.vg_name(pool)
        await self._group(vg)
        members = await self._members(vg)
        pv = next((p for p in members if not p.missing and same_device(p.name, device)), None)
        if pv is None:
            raise NotFound(f"{device} is not a physical volume of volume group '{vg}'")
        if len(members) == 1:
            raise InvalidState(f"{pv.name} is the last physical volume of '{vg}'; "
                               "delete the pool instead")
        if pv.pe_alloc_count > 0:
            room = sum(p.free for p in members
                       if p is not pv and not p.missing and p.attr[:1] == "a")
            if room < pv.used:
                raise NoSpace(
                    f"{pv.name} holds {pv.used} bytes of volume data and the other physical "
                    f"volumes of '{vg}' have only {room} bytes free: it cannot be removed "
                    "without losing data")
            await self._require_devices(
                f"{pv.name} holds {pv.used} bytes of volume data; moving them off (pvmove)")
            await lvm.pvmove(pv.name, pv.used)
        await lvm.vgreduce(vg, pv.name)
        await lvm.pvremove([pv.name])

    # -- volumes -------------------------------------------------------------------
    @staticmethod
    async def _thin_pool(vg: str) -> lvm.LogicalVolume | None:
        """The thin pool new sparse volumes go to: the first by name, or None."""
        pools = sorted((lv for lv in await lvm.lvs(vg) if lv.is_thin_pool),
                       key=lambda lv: lv.name)
        return pools[0] if pools else None

    @staticmethod
    def _check_room(group: lvm.VolumeGroup, needed: int, what: str) -> None:
        needed = lvm.round_up(needed, group.extent_size)
        if needed > group.free:
            raise NoSpace(f"{what} needs {needed} bytes; volume group '{group.name}' has "
                          f"{group.free} bytes free")

    async def _create_lv(self, vg: str, vol: VolumeDefinition, capacity: int) -> None:
        """A thin LV when ``allocation < capacity`` and the VG has a thin pool, else a
        fully allocated linear LV (allocation is then only a hint, as for raw files)."""
        name = lvm.validate_lv_name(vol.name, vg)
        group = (await lvm.vgs(vg))[0]
        if vol.allocation is not None and vol.allocation < capacity:
            thin_pool = await self._thin_pool(vg)
            if thin_pool is not None:
                await lvm.lvcreate_thin(vg, thin_pool.name, name, capacity)
                return
        self._check_room(group, capacity, f"logical volume '{name}'")
        await lvm.lvcreate(vg, name, capacity)

    async def create_volume(self, pool: PoolDefinition, vol: VolumeDefinition
                            ) -> VolumeDefinition:
        """lvcreate; with a <backingStore> naming an LV of this VG: a snapshot of it
        (libvirt's way) whose copy-on-write area is <allocation>, else <capacity>."""
        vg = self.vg_name(pool)
        _check_volume_options(vol)
        if not vol.capacity or vol.capacity <= 0:
            raise InvalidArgument("the volume needs a capacity greater than 0")
        if vol.backing_store is not None:
            origin = os.path.basename(vol.backing_store.path)
            if os.path.normpath(vol.backing_store.path) != f"/dev/{vg}/{origin}":
                raise InvalidArgument(
                    f"backing store {vol.backing_store.path} is not a volume of this pool")
            origin_lv = await self._lv(vg, origin)
            return await self.snapshot_volume(
                pool, self.to_volume(origin_lv), vol.name, vol.allocation or vol.capacity)
        await self._create_lv(vg, vol, vol.capacity)
        return await self.volume_info(pool, vol.name)

    async def resize_volume(self, pool: PoolDefinition, vol: VolumeDefinition, capacity: int,
                            shrink: bool) -> VolumeDefinition:
        """lvextend, or lvreduce with ``shrink`` (sizes round up to whole extents)."""
        vg = self.vg_name(pool)
        lv = await self._lv(vg, vol.name)
        if lv.kind in ("s", "S"):
            raise NotSupported(f"'{lv.name}' is a snapshot; it has the size of its origin")
        group = (await lvm.vgs(vg))[0]
        target = lvm.round_up(capacity, group.extent_size)
        if target > lv.size:
            if not lv.is_thin:
                self._check_room(group, target - lv.size, f"growing '{lv.name}'")
            await lvm.lvextend(vg, lv.name, target)
        elif target < lv.size:
            if not shrink:
                raise InvalidArgument(f"{capacity} is smaller than the volume's capacity "
                                      f"{lv.size}; pass option 'shrink'")
            await lvm.lvreduce(vg, lv.name, target)
        return await self.volume_info(pool, vol.name)

    async def delete_volume(self, pool: PoolDefinition, vol: VolumeDefinition) -> None:
        """lvremove; refused while the LV has snapshots (LVM would remove them too)."""
        vg = self.vg_name(pool)
        lv = await self._lv(vg, vol.name)
        snaps = sorted(o.name for o in await lvm.lvs(vg) if o.origin == lv.name)
        if snaps:
            raise Busy(f"'{lv.name}' has snapshots ({', '.join(snaps)}); delete them first")
        await lvm.lvremove(vg, lv.name)

    async def wipe_volume(self, pool: PoolDefinition, vol: VolumeDefinition,
                          algorithm: str = overwrite.ZERO) -> None:
        """Zeroes through the LV's device (a thin LV is discarded, which frees its space
        and reads back as zeroes; zeroes are written if the discard fails); another
        ``algorithm`` ("random") writes every byte of the device."""
        vg = self.vg_name(pool)
        lv = await self._lv(vg, vol.name)
        if lv.kind in ("s", "S"):
            raise NotSupported(f"'{lv.name}' is a snapshot: writing zeroes would overflow its "
                               "copy-on-write area; delete it instead")
        # Every chunk written lands in the copy-on-write area of each thick snapshot: one
        # smaller than the origin would overflow and become unusable.
        small = sorted(o.name for o in await lvm.lvs(vg)
                       if o.origin == lv.name and o.kind in ("s", "S") and o.size <= lv.size)
        if small:
            raise Busy(f"wiping '{lv.name}' would overflow (and so destroy) its snapshots "
                       f"{', '.join(small)}; delete them first")
        await self._require_devices(f"wiping '{lv.name}'")
        path = self._require_node(lv)
        if algorithm != overwrite.ZERO:
            await block_io.in_thread(overwrite.overwrite_device, path, algorithm,
                                     progress=progress.reporter(), what=f"wiping '{lv.name}'")
            return
        if lv.is_thin and which("blkdiscard"):
            res = await run_command(["blkdiscard", "--", path], timeout=DISCARD_TIMEOUT,
                                    check=False)
            if res.returncode == 0:
                return
            log.info("blkdiscard %s failed (%s); writing zeroes", path, res.stderr.strip())
        await block_io.in_thread(block_io.zero_device, path, what=f"wiping '{lv.name}'")

    async def snapshot_volume(self, pool: PoolDefinition, vol: VolumeDefinition, name: str,
                              size: int) -> VolumeDefinition:
        """lvcreate -s. ``size`` is the copy-on-write area of a thick snapshot; 0 means
        "as large as the origin" (it can never fill up), or a thin snapshot when the
        origin is a thin volume."""
        vg = self.vg_name(pool)
        name = lvm.validate_lv_name(name, vg)
        if size < 0:
            raise InvalidArgument("snapshot size must not be negative")
        origin = await self._lv(vg, vol.name)
        if origin.kind in ("s", "S"):
            raise NotSupported(f"'{origin.name}' is a snapshot; LVM cannot snapshot it again")
        await self._require_devices(f"snapshot of '{origin.name}'")
        group = (await lvm.vgs(vg))[0]
        if size or not origin.is_thin:
            self._check_room(group, size or origin.size, f"snapshot '{name}'")
        await lvm.lvcreate_snapshot(vg, origin.name, name, size or None, thin=origin.is_thin)
        return await self.volume_info(pool, name)

    async def create_volume_from(self, pool: PoolDefinition, vol: VolumeDefinition,
                                 source: VolumeDefinition) -> VolumeDefinition:
        """A new LV holding a copy of ``source`` (a file or device; raw is copied as is,
        image formats through ``qemu-img convert``); a larger capacity is zero-filled."""
        vg = self.vg_name(pool)
        lvm.validate_lv_name(vol.name, vg)
        _check_volume_options(vol)
        src_path = source.path
        if not src_path:
            raise InvalidArgument(f"source volume '{source.name}' has no path")
        await self._require_devices(f"cloning into '{vol.name}'")
        src_fmt = (source.format or "raw").lower()
        if src_fmt != "raw" and not which("qemu-img"):
            raise NotSupported(f"cloning a '{src_fmt}' volume needs qemu-img")
        try:
            src_size = block_io.device_size(src_path)
        except FileNotFoundError:
            raise NotFound(f"source volume {src_path} does not exist") from None
        except OSError as exc:
            raise InvalidArgument(f"cannot read {src_path}: {exc.strerror}") from None
        src_capacity = src_size if src_fmt == "raw" else (source.capacity or src_size)
        capacity = max(vol.capacity or 0, src_capacity)
        await self._create_lv(vg, vol, capacity)
        try:
            lv = await self._lv(vg, vol.name)
            dst = self._require_node(lv)
            what = f"cloning {src_path} into '{lv.name}'"
            if src_fmt == "raw":
                await block_io.in_thread(block_io.copy_into_device, src_path, dst,
                                         skip_zero=lv.is_thin, what=what)
            else:
                await run_command(
                    ["qemu-img", "convert", "-q", "-n", "-f", src_fmt, "-O", "raw", "--",
                     src_path, dst],
                    timeout=600 + src_capacity / COPY_MIN_RATE)
                if not lv.is_thin and lv.size > src_capacity:
                    await block_io.in_thread(block_io.zero_device, dst, src_capacity,
                                             what=what)
        except BaseException:
            try:
                await lvm.lvremove(vg, vol.name)
            except StorageError as e:
                log.warning("could not remove the half-made clone %s/%s: %s", vg, vol.name, e)
            raise
        return await self.volume_info(pool, vol.name)

    async def upload_volume(self, pool: PoolDefinition, vol: VolumeDefinition, fd: int,
                            offset: int, length: int) -> int:
        """Write into the LV through its device node; refused while a thick snapshot of
        it is smaller than what may be written (it would overflow and be lost)."""
        vg = self.vg_name(pool)
        lv = await self._lv(vg, vol.name)
        span = length or max(lv.size - offset, 0)
        small = sorted(o.name for o in await lvm.lvs(vg)
                       if o.origin == lv.name and o.kind in ("s", "S") and o.size < span)
        if small:
            raise Busy(f"writing {span} bytes into '{lv.name}' could overflow (and so "
                       f"destroy) its snapshots {', '.join(small)}")
        await self._require_devices(f"uploading into '{lv.name}'")
        node = os.path.realpath(self._require_node(lv))
        return await block_io.in_thread(transfer.upload_to_path, node, fd, offset, length,
                                        what=f"uploading into '{lv.name}'")

    async def download_volume(self, pool: PoolDefinition, vol: VolumeDefinition, fd: int,
                              offset: int, length: int) -> int:
        vg = self.vg_name(pool)
        lv = await self._lv(vg, vol.name)
        await self._require_devices(f"downloading '{lv.name}'")
        node = os.path.realpath(self._require_node(lv))
        return await block_io.in_thread(transfer.download_from_path, node, fd, offset, length,
                                        what=f"downloading '{lv.name}'")
