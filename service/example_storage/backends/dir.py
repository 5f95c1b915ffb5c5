"""The 'dir' pool: a directory of volume files."""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import stat

from .. import progress
from ..errors import Busy, Failed, InvalidArgument, InvalidState, NotFound, NotSupported
from ..model.definitions import PoolDefinition, VolumeDefinition
from ..system.runner import which
from . import file_volumes, overwrite
from .base import FEATURES, Backend, PoolStats, RefreshResult
from .block_io import cancellable

DEFAULT_POOL_MODE = 0o711   # libvirt's default for pool directories


class DirBackend(Backend):
    type_name = "dir"
    required_tools: tuple[str, ...] = ()
    optional_tools: tuple[str, ...] = ("qemu-img",)   # raw volumes work without it
    features = frozenset(FEATURES)
    volume_formats = file_volumes.FORMATS
    default_volume_format = "raw"
    default_volume_type = "file"
    # Volumes are independent files: core creates and deletes them side by side
    # (core/pool.py volume_lock); every file operation here is safe to run at once.
    concurrent_volume_ops = True
    # The target is a local filesystem: a sparse raw file is made right on the event loop
    # (file_volumes.create_volume on_loop); netfs (a server may stall) keeps threads.
    local_files = True
    # volume_dir checks more than that the directory is there (fs and netfs pools: that
    # their filesystem is mounted on it): then every operation asks it first, or a volume
    # operation could reach the directory under a mount that went away
    checks_mount = False

    # -- tools ---------------------------------------------------------------
    def missing_tools(self) -> list[str]:
        return [t for t in self.required_tools if which(t) is None]

    def missing_optional_tools(self) -> list[str]:
        return [t for t in self.optional_tools if which(t) is None]

    def available_volume_formats(self) -> tuple[str, ...]:
        if which("qemu-img") is None:
            return file_volumes.RAW_FORMATS
        return self.volume_formats

    # -- paths ---------------------------------------------------------------
    @staticmethod
    def target_path(pool: PoolDefinition) -> str:
        path = pool.target.path if pool.target else None
        if not path:
            raise InvalidArgument(f"pool '{pool.name}' has no target path")
        return _checked_target(path)

    async def volume_dir(self, pool: PoolDefinition) -> str:
        """The directory volumes live in, checked to be usable now."""
        path = self.target_path(pool)
        if not os.path.isdir(path):
            raise InvalidState(f"pool '{pool.name}': {path} is not a directory (run Build first)")
        return path

    async def _volume_path(self, pool: PoolDefinition, vol: VolumeDefinition) -> str:
        # Always target/name: a path in the caller's XML is never used.
        return file_volumes.volume_path(await self.volume_dir(pool), vol.name)

    # -- pool ----------------------------------------------------------------
    def _make_target(self, pool: PoolDefinition) -> str:
        path = self.target_path(pool)
        perms = pool.target.permissions if pool.target else None
        if os.path.lexists(path) and not os.path.isdir(path):
            raise InvalidState(f"{path} exists and is not a directory")
        try:
            os.makedirs(path, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise Failed(f"cannot create {path}: {exc.strerror}") from None
        file_volumes.apply_permissions(path, perms, DEFAULT_POOL_MODE)
        return path

    async def is_active(self, pool: PoolDefinition) -> bool:
        return os.path.isdir(self.target_path(pool))

    async def build(self, pool: PoolDefinition, overwrite: bool) -> None:
        await asyncio.to_thread(self._make_target, pool)

    async def start(self, pool: PoolDefinition) -> None:
        await self.volume_dir(pool)

    async def stop(self, pool: PoolDefinition, force: bool = False) -> None:
        return None

    async def delete(self, pool: PoolDefinition) -> None:
        """Remove the (empty) target directory; files in it are never destroyed."""
        path = self.target_path(pool)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidState(f"{path} is not a directory")
        try:
            os.rmdir(path)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise Busy(
                    f"pool '{pool.name}': {path} still holds files; delete its volumes first"
                ) from None
            if exc.errno == errno.EBUSY:
                raise Busy(f"pool '{pool.name}': {path} is in use (a mount point?)") from None
            raise Failed(f"cannot remove {path}: {exc.strerror}") from None

    @staticmethod
    def _stats(path: str) -> PoolStats:
        st = os.statvfs(path)
        capacity = st.f_blocks * st.f_frsize
        return PoolStats(
            capacity=capacity,
            allocation=capacity - st.f_bfree * st.f_frsize,
            available=st.f_bavail * st.f_frsize,
        )

    async def stats(self, pool: PoolDefinition) -> PoolStats:
        """Capacity figures without listing the volumes (cheap after a volume change: one
        statvfs of a local directory, made right here rather than in a thread; netfs pools
        override this with a deadline). The directory is checked only when statvfs fails
        (the clear error of volume_dir then)."""
        if self.checks_mount:
            return self._stats(await self.volume_dir(pool))
        path = self.target_path(pool)
        try:
            return self._stats(path)
        except OSError:
            await self.volume_dir(pool)
            raise

    async def refresh(self, pool: PoolDefinition) -> RefreshResult:
        path = await self.volume_dir(pool)
        stats = await asyncio.to_thread(self._stats, path)
        return RefreshResult(stats=stats, volumes=await file_volumes.list_volumes(path))

    # -- volumes -------------------------------------------------------------
    def _check_format(self, vol: VolumeDefinition) -> None:
        fmt = (vol.format or self.default_volume_format or "raw").lower()
        if fmt not in self.volume_formats:
            raise InvalidArgument(
                f"pool type '{self.type_name}' does not support volume format '{fmt}' "
                f"(supported: {', '.join(self.volume_formats)})"
            )

    async def create_volume(
        self, pool: PoolDefinition, vol: VolumeDefinition
    ) -> VolumeDefinition:
        self._check_format(vol)
        return await file_volumes.create_volume(await self.volume_dir(pool), vol,
                                                on_loop=self.local_files)

    async def create_volume_from(
        self, pool: PoolDefinition, vol: VolumeDefinition, source: VolumeDefinition
    ) -> VolumeDefinition:
        self._check_format(vol)
        return await file_volumes.clone_volume(await self.volume_dir(pool), vol, source,
                                               progress=progress.reporter())

    async def delete_volume(self, pool: PoolDefinition, vol: VolumeDefinition) -> None:
        if self.checks_mount:
            await file_volumes.delete_volume(await self._volume_path(pool, vol))
            return
        path = file_volumes.volume_path(self.target_path(pool), vol.name)
        try:
            await file_volumes.delete_volume(path)
        except (NotFound, Failed):
            await self.volume_dir(pool)     # the clear error when the directory is gone
            raise

    async def resize_volume(
        self, pool: PoolDefinition, vol: VolumeDefinition, capacity: int, shrink: bool
    ) -> VolumeDefinition:
        return await file_volumes.resize_volume(
            await self._volume_path(pool, vol), capacity, shrink
        )

    async def wipe_volume(self, pool: PoolDefinition, vol: VolumeDefinition,
                          algorithm: str = overwrite.ZERO) -> None:
        path = await self._volume_path(pool, vol)
        if algorithm == overwrite.ZERO:
            await file_volumes.wipe_volume(path, progress=progress.reporter())
            return
        # Writing every byte: raw volumes only (it would destroy an image's header).
        directory = await self.volume_dir(pool)
        fresh = await file_volumes.volume_info(directory, vol.name)
        if fresh.format != "raw":
            raise NotSupported(f"wipe algorithm '{algorithm}' overwrites every byte; "
                               f"'{vol.name}' is a {fresh.format} image (only raw volumes)")
        real, real_dir = os.path.realpath(path), os.path.realpath(directory)
        if os.path.commonpath([real, real_dir]) != real_dir:
            raise InvalidState(f"'{vol.name}' does not resolve to a file of the pool")
        await cancellable(overwrite.overwrite_file, real, algorithm, progress=progress.reporter())

    async def upload_volume(self, pool: PoolDefinition, vol: VolumeDefinition, fd: int,
                            offset: int, length: int) -> int:
        """Raw volumes only (file_volumes.upload_volume)."""
        return await file_volumes.upload_volume(
            await self._volume_path(pool, vol), fd, offset, length)

    async def download_volume(self, pool: PoolDefinition, vol: VolumeDefinition, fd: int,
                              offset: int, length: int) -> int:
        """An image format sends its file's bytes (file_volumes.download_volume)."""
        return await file_volumes.download_volume(
            await self._volume_path(pool, vol), fd, offset, length)

    async def volume_info(self, pool: PoolDefinition, name: str) -> VolumeDefinition:
        try:
            return await file_volumes.volume_info(await self.volume_dir(pool), name)
        except NotFound:
            raise NotFound(f"pool '{pool.name}' has no volume '{name}'") from None


@functools.lru_cache(maxsize=1024)
def _checked_target(path: str) -> str:
    """``path`` normalised; InvalidArgument unless absolute and not '/' (remembered: asked
    on every volume operation)."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"pool target path '{path}' is not absolute")
    path = os.path.normpath(path)
    if path == "/":
        raise InvalidArgument("pool target path must not be '/'")
    return path
