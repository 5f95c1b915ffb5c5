"""netfs pools over D-Bus on the host: export discovery against a real nfs-ganesha on
127.0.0.1, the refusals this host can show. A real kernel NFS mount needs the VM lane
(tests/vm/test_vm_nfs.py runs tests/vm_guest/test_netfs_guest.py)."""

import shutil

import pytest
from lxml import etree

from tests.harness.ganesha import Ganesha, ganesha_missing

E = "org.example.Storage.Error."
FS_NS = "http://libvirt.org/schemas/storagepool/fs/1.0"


@pytest.fixture
def ganesha(tmp_path):
    missing = ganesha_missing()
    if missing:
        pytest.skip(missing)
    if not shutil.which("nfs-ls"):
        pytest.skip("nfs-ls is not installed (libnfs-utils; run scripts/bootstrap)")
    server = Ganesha(tmp_path / "ganesha").start()
    try:
        yield server
    finally:
        server.cleanup()


async def test_find_pool_sources_lists_the_servers_exports(svc, ganesha):
    hint = f"<source><host name='127.0.0.1' port='{ganesha.port}'/></source>"
    xml = await svc.manager("FindPoolSources", "ssa{sv}", "netfs", hint, {})
    root = etree.fromstring(xml.encode())
    sources = root.findall("source")
    assert len(sources) == 1, xml
    assert sources[0].find("host").get("name") == "127.0.0.1"
    assert sources[0].find("dir").get("path") == "/export"
    assert sources[0].find("format").get("type") == "nfs"


async def test_find_pool_sources_needs_a_host_and_a_server(svc, ganesha):
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", "netfs", "<source/>", {})
    assert err.type == E + "InvalidArgument", err.text
    ganesha.stop()
    hint = f"<source><host name='127.0.0.1' port='{ganesha.port}'/></source>"
    err = await svc.manager_error("FindPoolSources", "ssa{sv}", "netfs", hint, {})
    assert err.type == E + "Failed", err.text
    assert "cannot list the exports of 127.0.0.1" in err.text


async def test_a_cifs_pool_is_defined_but_refused_at_start_without_mount_cifs(svc, tmp_path):
    if shutil.which("mount.cifs") or shutil.which("/sbin/mount.cifs"):
        pytest.skip("mount.cifs is installed here")
    target = tmp_path / "cifs"
    xml = (f"<pool type='netfs'><name>c1</name><source><host name='srv'/>"
           f"<dir path='share'/><format type='cifs'/></source>"
           f"<target><path>{target}</path></target></pool>")
    path = await svc.manager("DefinePool", "sa{sv}", xml, {})
    err = await svc.call_error(path, "org.example.Storage.Pool", "Start", "a{sv}", {})
    assert err.type == E + "NotSupported", err.text
    assert "mount.cifs" in err.text
    props = await svc.props(path, "org.example.Storage.Pool")
    assert props["State"] == "inactive"
    assert not target.exists()
