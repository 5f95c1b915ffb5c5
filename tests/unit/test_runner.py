"""The command runner: argv only, LC_ALL=C, timeouts kill the whole process group."""

import asyncio
import os
import sys
import time

import pytest
from example_storage.errors import CommandFailed, TimedOut, ToolMissing
from example_storage.system.runner import run_command, which

PY = sys.executable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); count it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_output_and_returncode():
    code = "import sys; print('out'); print('err', file=sys.stderr)"
    result = await run_command([PY, "-c", code])
    assert result.returncode == 0
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.argv[0] == PY


async def test_lc_all_and_env_merge():
    code = "import os; print(os.environ['LC_ALL'], os.environ['EXTRA'], 'PATH' in os.environ)"
    result = await run_command([PY, "-c", code], env={"EXTRA": "x", "LC_ALL": "de_DE.UTF-8"})
    assert result.stdout.split() == ["C", "x", "True"]


async def test_stdin_is_devnull_or_input():
    result = await run_command([PY, "-c", "import sys; print(repr(sys.stdin.read()))"])
    assert result.stdout.strip() == "''"
    result = await run_command(["cat"], input=b"hello")
    assert result.stdout == "hello"


async def test_new_session():
    result = await run_command([PY, "-c", "import os; print(os.getsid(0) == os.getpid())"])
    assert result.stdout.strip() == "True"


async def test_missing_tool():
    with pytest.raises(ToolMissing, match="no-such-tool-xyz is not installed"):
        await run_command(["no-such-tool-xyz", "--help"])
    with pytest.raises(ToolMissing):
        await run_command(["/nonexistent/dir/tool"])
    assert which("no-such-tool-xyz") is None
    assert which("sh") is not None


async def test_failure_carries_stderr():
    code = "import sys; sys.stderr.write('disk on fire\\n'); sys.exit(3)"
    with pytest.raises(CommandFailed) as info:
        await run_command([PY, "-c", code])
    assert info.value.returncode == 3
    assert "disk on fire" in str(info.value)
    assert "disk on fire" in info.value.message
    assert info.value.stderr == "disk on fire\n"


async def test_no_check_returns_failure():
    result = await run_command([PY, "-c", "import sys; sys.exit(2)"], check=False)
    assert result.returncode == 2


async def test_timeout_kills_process_group_with_grandchild(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    # The child starts a grandchild that ignores SIGTERM and would sleep for a minute,
    # then waits for it: both must be gone after the timeout.
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "p.wait()\n"
    )
    start = time.monotonic()
    with pytest.raises(TimedOut, match=r"timed out after 1\.5s"):
        await run_command([PY, "-c", code], timeout=1.5)
    assert time.monotonic() - start < 10
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(grandchild):
            break
        await asyncio.sleep(0.1)
    assert not _alive(grandchild)


async def test_timeout_message_names_the_tool():
    with pytest.raises(TimedOut, match=r"^sleep timed out after 0\.2s$"):
        await run_command(["sleep", "30"], timeout=0.2)


async def test_cancel_kills_the_process(tmp_path):
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    task = asyncio.ensure_future(run_command([PY, "-c", code], timeout=60))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if not _alive(pid):
            break
        await asyncio.sleep(0.1)
    assert not _alive(pid)
