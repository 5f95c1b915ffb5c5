"""Pool definitions on disk, as libvirt-style XML files.

Layout (both roots are daemon options, so tests run in temp dirs)::

    CONFIG_DIR/pools/NAME.xml             persistent definition
    CONFIG_DIR/pools/autostart/NAME.xml   symlink to ../NAME.xml: start with the service
    RUN_DIR/pools/NAME.xml                definition of a pool that is active now
                                          (transient pools too)
    RUN_DIR/pools/NAME.runtime.json       that run's Start options that must survive a
                                          daemon restart (iscsi-direct: lun-poll-interval)

Every write is atomic: a temp file in the same directory, fsync, rename, fsync of
the directory. A reader never sees half a file, even after ``kill -9``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import Failed, StorageError
from ..model.definitions import PoolDefinition
from ..model.names import validate_name
from ..model.poolxml import format_pool_xml, parse_pool_xml

log = logging.getLogger(__name__)


@dataclass
class StoredPool:
    definition: PoolDefinition
    autostart: bool = False


def atomic_write(path: Path, data: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PoolConfigStore:
    """Reads and writes persistent pool configs, autostart links and runtime state."""

    def __init__(self, config_dir: Path, run_dir: Path) -> None:
        self.pools_dir = Path(config_dir) / "pools"
        self.autostart_dir = self.pools_dir / "autostart"
        self.state_dir = Path(run_dir) / "pools"

    def prepare(self) -> None:
        for d in (self.pools_dir, self.autostart_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o755)

    # -- paths --------------------------------------------------------------
    def _config_path(self, name: str) -> Path:
        return self.pools_dir / f"{validate_name(name, 'pool name')}.xml"

    def _autostart_path(self, name: str) -> Path:
        return self.autostart_dir / f"{validate_name(name, 'pool name')}.xml"

    def _state_path(self, name: str) -> Path:
        return self.state_dir / f"{validate_name(name, 'pool name')}.xml"

    # -- persistent configs -------------------------------------------------
    def save_config(self, pool: PoolDefinition) -> None:
        self._write(self._config_path(pool.name), pool)

    def remove_config(self, name: str) -> None:
        self.set_autostart(name, False)
        self._config_path(name).unlink(missing_ok=True)
        _fsync_dir(self.pools_dir)

    def set_autostart(self, name: str, autostart: bool) -> None:
        link = self._autostart_path(name)
        if autostart:
            if not link.is_symlink():
                tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
                tmp.unlink(missing_ok=True)
                os.symlink(f"../{name}.xml", tmp)
                os.rename(tmp, link)
        else:
            link.unlink(missing_ok=True)
        _fsync_dir(self.autostart_dir)

    def load_configs(self) -> list[StoredPool]:
        result = []
        for definition in self._read_all(self.pools_dir):
            autostart = self._autostart_path(definition.name).is_symlink()
            result.append(StoredPool(definition, autostart))
        return result

    # -- runtime state ------------------------------------------------------
    def save_state(self, pool: PoolDefinition) -> None:
        self._write(self._state_path(pool.name), pool)

    def remove_state(self, name: str) -> None:
        self._state_path(name).unlink(missing_ok=True)
        self._runtime_path(name).unlink(missing_ok=True)

    def _runtime_path(self, name: str) -> Path:
        return self.state_dir / f"{validate_name(name, 'pool name')}.runtime.json"

    def save_runtime(self, name: str, values: dict[str, object]) -> None:
        """Keep an active pool's run options (a JSON object) beside its state."""
        path = self._runtime_path(name)
        try:
            atomic_write(path, json.dumps(values, sort_keys=True) + "\n")
        except OSError as e:
            raise Failed(f"cannot write {path}: {e.strerror}") from None

    def load_runtime(self, name: str) -> dict[str, object]:
        """The run options saved with ``save_runtime``; {} when none (or unreadable)."""
        path = self._runtime_path(name)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable runtime options %s: %s", path, e)
            return {}
        return values if isinstance(values, dict) else {}

    def load_states(self) -> list[PoolDefinition]:
        return self._read_all(self.state_dir)

    # -- helpers ------------------------------------------------------------
    def _write(self, path: Path, pool: PoolDefinition) -> None:
        try:
            atomic_write(path, format_pool_xml(pool))
        except OSError as e:
            raise Failed(f"cannot write {path}: {e.strerror}") from None

    @staticmethod
    def _read_all(directory: Path) -> list[PoolDefinition]:
        result = []
        if not directory.is_dir():
            return result
        for path in sorted(directory.glob("*.xml")):
            if not path.is_file():
                continue
            try:
                definition = parse_pool_xml(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, StorageError) as e:
                log.warning("ignoring unreadable pool file %s: %s", path, e)
                continue
            if f"{definition.name}.xml" != path.name:
                log.warning("ignoring %s: it defines pool '%s'", path, definition.name)
                continue
            result.append(definition)
        return result
