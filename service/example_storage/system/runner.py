"""The one way this service runs external programs.

argv lists only (never a shell), ``LC_ALL=C``, a new session per command so that a
timeout (or a cancelled caller) kills the whole process group, grandchildren
included, and structured errors that carry the tool's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass

from ..errors import CommandFailed, Failed, TimedOut, ToolMissing

# Tools such as mkfs.* and blkid live in sbin, which a non-login PATH may lack.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")

# How long to wait for the pipes to drain after the process group was killed.
_DRAIN_AFTER_KILL = 5.0


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def which(tool: str) -> str | None:
    """Absolute path of ``tool`` (PATH first, then the usual sbin/bin dirs), or None."""
    if os.sep in tool:
        return tool if os.access(tool, os.X_OK) and os.path.isfile(tool) else None
    found = shutil.which(tool)
    if found:
        return found
    return shutil.which(tool, path=os.pathsep.join(_EXTRA_PATH))


def _tool_name(argv: list[str]) -> str:
    return os.path.basename(argv[0]) if argv else "?"


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # start_new_session=True made the child a session and group leader: pgid == pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process, comm: asyncio.Task) -> None:
    """After a kill: let the pipes drain and the child be reaped, bounded in time."""
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(comm), _DRAIN_AFTER_KILL)
    if not comm.done():
        comm.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(proc.wait(), _DRAIN_AFTER_KILL)


async def run_command(
    argv: list[str],
    *,
    timeout: float = 60,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> CommandResult:
    """Run ``argv`` and return its exit status and decoded output.

    Raises ToolMissing when the program does not exist, TimedOut when it ran longer
    than ``timeout`` seconds (its whole process group is killed first) and, with
    ``check``, CommandFailed (stderr in the message) when it exits non-zero.
    """
    if not argv:
        raise Failed("run_command: empty argv")
    argv = [str(a) for a in argv]
    tool = _tool_name(argv)
    program = which(argv[0]) if os.sep not in argv[0] else argv[0]
    if program is None:
        raise ToolMissing(f"{tool} is not installed")

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    full_env["LC_ALL"] = "C"

    try:
        proc = await asyncio.create_subprocess_exec(
            program,
            *argv[1:],
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise ToolMissing(f"{tool} is not installed") from None
    except PermissionError as exc:
        raise Failed(f"cannot run {tool}: {exc.strerror}") from None

    comm = asyncio.ensure_future(proc.communicate(input))
    try:
        stdout_b, stderr_b = await asyncio.wait_for(asyncio.shield(comm), timeout)
    except TimeoutError:
        _kill_group(proc)
        await _reap(proc, comm)
        raise TimedOut(f"{tool} timed out after {timeout:g}s") from None
    except BaseException:
        # Cancelled by the caller (a job cancel, daemon shutdown): leave nothing running.
        _kill_group(proc)
        await _reap(proc, comm)
        raise

    returncode = proc.returncode if proc.returncode is not None else -1
    result = CommandResult(
        argv=argv,
        returncode=returncode,
        stdout=stdout_b.decode("utf-8", "replace"),
        stderr=stderr_b.decode("utf-8", "replace"),
    )
    if check and returncode != 0:
        raise CommandFailed(argv, returncode, result.stderr)
    return result
