"""The bench (bench/, ``python -m bench``) still runs: its ``--quick`` mode against our
service only (no libvirt install), one D-Bus library, every figure measured."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the bench needs root (loop devices, mounts)"),
]

# every figure the quick run must produce for our side (bench/report.py's keys)
FIGURES = (
    "create_rate", "delete_rate", "get_median", "get_p99", "ping_median", "ping_p99",
    "list_small", "big_pool_start", "refresh_big", "list_big", "rss_big", "clone_ext4",
    "clone_xfs", "uevent_median", "uevent_p95", "startup_empty", "startup_big",
    "rss_startup_big", "list_big_other_client", "steal_create_delete",
)


def test_quick_bench_of_our_side(tmp_path):
    free = subprocess.run(["losetup", "-f"], capture_output=True, text=True)
    if free.returncode != 0:
        pytest.skip(f"no free loop device: {free.stderr.strip()}")
    out_json = tmp_path / "figures.json"
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-libvirt", "--libraries", "dbus-next",
         "--tmpdir", str(tmp_path), "--json", str(out_json)],
        cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, (
        f"bench failed ({elapsed:.0f}s):\n{res.stdout}\n{res.stderr[-3000:]}")
    figures = json.loads(out_json.read_text())["ours"]["dbus-next"]
    missing = [k for k in FIGURES if not isinstance(figures.get(k), (int, float))]
    assert not missing, f"figures missing or failed: {missing}\n{res.stdout}"
    assert figures["create_rate"] > 0 and figures["list_big"] > 0
    # the printed table names every figure with our column and the targets
    assert "ours/dbus-next" in res.stdout and "<= 300 ms" in res.stdout
    # the client is dbus-fast (compiled) by default; the big listing is also timed with
    # the other client library
    assert "client: dbus-fast" in res.stdout
    assert "the same listing, dbus-next client" in res.stdout
    assert "libvirt-dbus" not in res.stdout.split("figure", 1)[1].splitlines()[0]
    # nothing left behind: the bench's temp dir is removed, its loop devices detached
    assert [p.name for p in tmp_path.iterdir()] == ["figures.json"]
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True)
    assert str(tmp_path) not in attached.stdout
