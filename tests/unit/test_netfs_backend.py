"""The netfs backend on the host: parsers of captured real tool output, source/option
building, the mount-table match, who holds a path, the thread deadline, discovery against
a real nfs-ganesha on 127.0.0.1 and the refusals at Start (real mounts: tests/vm_guest)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.example_storage.backends import netfs
from service.example_storage.backends.netfs import NetfsBackend
from service.example_storage.backends.registry import backend_for
from service.example_storage.errors import InvalidArgument, InvalidState, NotSupported, TimedOut
from service.example_storage.model.definitions import PoolSource, SourceHost, VolumeDefinition
from service.example_storage.model.poolxml import parse_pool_xml
from service.example_storage.system import mounts
from tests.harness.ganesha import Ganesha, free_port, ganesha_missing

DATA = Path(__file__).parent / "data" / "netfs"


def pool(source: str, extra: str = "", target: str = "/tmp/netfs-unit-target"):
    return parse_pool_xml(
        f"<pool type='netfs' xmlns:fs='http://libvirt.org/schemas/storagepool/fs/1.0'>"
        f"<name>n</name><source>{source}</source><target><path>{target}</path></target>"
        f"{extra}</pool>"
    )


# -- pure helpers on captured output --------------------------------------------
def test_parse_showmount_with_and_without_header() -> None:
    for name in ("showmount-e.txt", "showmount-e-no-headers.txt"):
        assert netfs.parse_showmount((DATA / name).read_text()) == ["/tmp/h6v3/export"]
    assert netfs.parse_showmount("") == []


def test_parse_nfs_ls_of_the_v4_pseudo_root() -> None:
    assert netfs.parse_nfs_ls((DATA / "nfs-ls-v4-root.txt").read_text()) == ["/export"]
    # an export at /srv/vols: the pseudo-root shows its first component only
    assert netfs.parse_nfs_ls((DATA / "nfs-ls-v4-root-nested.txt").read_text()) == ["/srv"]
    assert netfs.parse_nfs_ls("-rw-r--r--  1 0 0 2 file\n") == []


def test_source_spec_per_format() -> None:
    assert netfs.source_spec(pool("<host name='srv'/><dir path='/e'/>")) == ("nfs", "srv:/e")
    assert netfs.source_spec(pool("<host name='fd00::1'/><dir path='/e'/><format type='nfs'/>")
                             ) == ("nfs", "[fd00::1]:/e")
    assert netfs.source_spec(pool("<host name='srv'/><dir path='share'/><format type='cifs'/>")
                             ) == ("cifs", "//srv/share")
    assert netfs.source_spec(
        pool("<host name='g'/><dir path='/vol'/><format type='glusterfs'/>")
    ) == ("glusterfs", "g:/vol")


def test_mount_options_add_the_protocol_version() -> None:
    p = pool("<host name='srv'/><dir path='/e'/><format type='nfs'/><protocol ver='4'/>",
             "<fs:mount_opts><fs:option name='soft'/><fs:option name='timeo=50'/>"
             "</fs:mount_opts>")
    assert netfs.mount_options(p) == ["soft", "timeo=50", "vers=4"]
    p.source.protocol_ver = "4; rm"
    with pytest.raises(InvalidArgument):
        netfs.mount_options(p)


def test_a_mount_matches_by_type_and_source() -> None:
    line = ("101 29 0:52 / /mnt/p rw,relatime shared:1 - nfs4 10.0.2.2:/export/ "
            "rw,vers=4.2,addr=10.0.2.2\n")
    entry = mounts.find_mount("/mnt/p", line)
    assert netfs.matching_mount(entry, "nfs", "10.0.2.2:/export")
    assert not netfs.matching_mount(entry, "nfs", "10.0.2.2:/other")
    assert not netfs.matching_mount(entry, "cifs", "//10.0.2.2/export")
    tmpfs = mounts.find_mount("/mnt/p", "101 29 0:52 / /mnt/p rw - tmpfs tmpfs rw\n")
    assert not netfs.matching_mount(tmpfs, "nfs", "10.0.2.2:/export")


def test_holders_of_finds_an_open_file_and_a_cwd(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.mkdir()
    (held / "f").write_text("x")
    sleeper = subprocess.Popen(["sleep", "60"], stdin=(held / "f").open(), cwd="/")
    in_dir = subprocess.Popen(["sleep", "60"], cwd=held)
    try:
        found = {h.pid: h for h in netfs.holders_of(str(held))}
        assert found[sleeper.pid].path == str(held / "f")
        assert found[sleeper.pid].command == "sleep"
        assert found[in_dir.pid].path == str(held)
        assert netfs.holders_of(str(tmp_path / "nothing")) == []
    finally:
        for p in (sleeper, in_dir):
            p.kill()
            p.wait()


def test_with_deadline_abandons_a_stuck_call() -> None:
    release = threading.Event()

    async def main() -> None:
        assert await netfs.with_deadline(sum, [1, 2], timeout=5, what="sum") == 3
        with pytest.raises(TimedOut, match="stuck: no answer within 0.2 s"):
            await netfs.with_deadline(release.wait, 30, timeout=0.2, what="stuck")
        with pytest.raises(ZeroDivisionError):
            await netfs.with_deadline(lambda: 1 / 0, timeout=5, what="div")

    try:
        asyncio.run(main())
    finally:
        release.set()


# -- the backend ------------------------------------------------------------------
def test_registered_for_netfs() -> None:
    assert isinstance(backend_for("netfs"), NetfsBackend)


def test_cifs_and_glusterfs_are_refused_at_start_without_their_tools(tmp_path: Path) -> None:
    for fmt, helper in (("cifs", "mount.cifs"), ("glusterfs", "mount.glusterfs")):
        if shutil.which(helper) or Path(f"/sbin/{helper}").exists():
            continue
        p = pool(f"<host name='srv'/><dir path='/e'/><format type='{fmt}'/>",
                 target=str(tmp_path / fmt))
        with pytest.raises(NotSupported, match=helper):
            asyncio.run(NetfsBackend().start(p))
        assert not (tmp_path / fmt).exists()


def test_not_mounted_pool_is_inactive_and_refuses_volumes(tmp_path: Path) -> None:
    p = pool("<host name='127.0.0.1'/><dir path='/e'/>", target=str(tmp_path / "t"))
    backend = NetfsBackend()
    assert asyncio.run(backend.is_active(p)) is False
    with pytest.raises(InvalidState, match="not mounted"):
        asyncio.run(backend.refresh(p))
    # a file under the (unmounted) mount point is not the volume: never deleted
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "v").write_bytes(b"local")
    with pytest.raises(InvalidState, match="not mounted"):
        asyncio.run(backend.delete_volume(p, VolumeDefinition(name="v")))
    with pytest.raises(InvalidState, match="not mounted"):
        asyncio.run(backend.stats(p))
    assert (tmp_path / "t" / "v").read_bytes() == b"local"
    asyncio.run(backend.stop(p, force=True))   # nothing mounted: nothing to do


@pytest.fixture
def ganesha(tmp_path: Path) -> Iterator[Ganesha]:
    missing = ganesha_missing()
    if missing:
        pytest.skip(missing)
    server = Ganesha(tmp_path / "ganesha").start()
    try:
        yield server
    finally:
        server.cleanup()


def test_find_sources_lists_the_v4_exports_of_a_real_ganesha(ganesha: Ganesha) -> None:
    if not shutil.which("nfs-ls"):
        pytest.skip("nfs-ls is not installed (libnfs-utils; run scripts/bootstrap)")
    hint = PoolSource(hosts=[SourceHost("127.0.0.1", ganesha.port)])
    found = asyncio.run(NetfsBackend().find_sources(hint))
    assert [(s.hosts[0].name, s.dir, s.format) for s in found] == [
        ("127.0.0.1", "/export", "nfs")]


def test_find_sources_names_the_failure_when_no_server_answers() -> None:
    port = free_port()
    hint = PoolSource(hosts=[SourceHost("127.0.0.1", port)])
    with pytest.raises(Exception, match="cannot list the exports of 127.0.0.1"):
        asyncio.run(NetfsBackend().find_sources(hint))
    with pytest.raises(InvalidArgument):
        asyncio.run(NetfsBackend().find_sources(None))
