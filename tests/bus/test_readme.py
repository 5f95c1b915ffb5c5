"""The README's busctl walkthrough works exactly as printed."""

import json
import os
import re
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def walkthrough() -> str:
    text = README.read_text()
    after = text.split("Then, as printed:", 1)[1]
    return re.search(r"```sh\n(.*?)```", after, re.S).group(1)


def test_readme_starts_with_the_two_commands():
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert blocks[0].strip() == "scripts/demo"
    assert blocks[1].strip() == "scripts/test"
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test" in ci


async def test_walkthrough_as_printed(svc, tmp_path):
    script = walkthrough()
    assert script.count("busctl") >= 7
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=svc.bus.address, TMPDIR=str(tmp_path))
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert 'o "/org/example/Storage/pools/walk"' in out
    assert 't 2147483648' in out                       # the get-property line
    assert "<pool type=" in out and "<name>walk</name>" in out   # busctl escapes quotes
    objects = json.loads(out[out.index("{"):])["data"][0]
    vol = objects["/org/example/Storage/pools/walk/volumes/disk1"]["org.example.Storage.Volume"]
    assert vol["Capacity"]["data"] == 2147483648 and vol["Format"]["data"] == "qcow2"
    pool = objects["/org/example/Storage/pools/walk"]["org.example.Storage.Pool"]
    assert pool["State"]["data"] == "running"
    assert Path(vol["Path"]["data"]).is_file()


def test_demo_then_walkthrough_then_ctrl_c(tmp_path):
    """The README's first command, used as the README says: start the demo, run the
    walkthrough in a second shell against the bus it prints, stop it with Ctrl-C."""
    import re as _re
    import signal
    import sys

    from tests.harness.procs import pid_alive

    demo = subprocess.Popen(
        [sys.executable, str(README.parent / "scripts" / "demo.py")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("export DBUS_SYSTEM_BUS_ADDRESS="):
                break
        out = "".join(lines)
        assert "export DBUS_SYSTEM_BUS_ADDRESS=" in out, out[-3000:]
        assert "demo.img: size 2147483648 bytes" in out
        address = out.split("export DBUS_SYSTEM_BUS_ADDRESS=")[1].splitlines()[0].strip("'")
        pids = [int(p) for p in _re.findall(r"(?:dbus-daemon pid|daemon: pid) (\d+)", out)]
        assert len(pids) == 2

        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address, TMPDIR=str(tmp_path))
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "/org/example/Storage/pools/demo" in res.stdout   # the demo's own pool too

        demo.send_signal(signal.SIGINT)
        rest = demo.communicate(timeout=60)[0]
        assert demo.returncode == 0, rest
        assert "daemon stopped (exit code 0)" in rest
        assert not any(pid_alive(p) for p in pids)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
