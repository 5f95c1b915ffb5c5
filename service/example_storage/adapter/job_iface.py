"""org.example.Storage.Job: one object per running long operation
(introspection/org.example.Storage.Job.xml), and ``running_job`` to start one."""

import contextlib
from collections.abc import AsyncIterator

from . import actions
from .bus import method, signal
from .calls import authorized_unless_owner, current_message
from .paths import JOB_IFACE, job_path
from .properties import ExportedObject, with_properties


@contextlib.asynccontextmanager
async def running_job(service, operation: str, objects: list[str], *,
                      cancelable: bool = True) -> AsyncIterator[object]:
    """Run the block as a Job (core/jobs.py) started by the calling user: exported while
    it runs, cancellable through Job.Cancel (the block then raises Cancelled)."""
    msg = current_message.get()
    uid = 0
    if msg is not None and msg.sender:
        uid = await service.authority.caller_uid(msg.sender)
    async with service.manager.jobs.run(operation, objects, uid, cancelable=cancelable) as job:
        yield job


@with_properties
class JobInterface(ExportedObject):
    PROPERTIES = (
        ("Operation", "s"), ("Objects", "ao"), ("Progress", "d"), ("ProgressValid", "b"),
        ("BytesDone", "t"), ("BytesTotal", "t"), ("Rate", "t"), ("ExpectedEndTime", "t"),
        ("StartTime", "t"), ("StartedBy", "u"), ("Cancelable", "b"),
    )

    def __init__(self, job, service) -> None:
        super().__init__(JOB_IFACE, service)
        self.job = job

    def property_values(self) -> dict[str, object]:
        j = self.job
        return {
            "Operation": j.operation, "Objects": list(j.objects), "Progress": j.progress,
            "ProgressValid": j.progress_valid, "BytesDone": j.bytes_done,
            "BytesTotal": j.bytes_total, "Rate": j.rate,
            "ExpectedEndTime": j.expected_end_time, "StartTime": j.start_time,
            "StartedBy": j.started_by, "Cancelable": j.cancelable,
        }

    def auth_details(self) -> dict[str, str]:
        return {"operation": self.job.operation, "started-by": str(self.job.started_by)}

    def owner_uid(self) -> int:
        return self.job.started_by

    @method()
    @authorized_unless_owner(actions.JOB_CANCEL_OTHER)
    async def Cancel(self, options: "a{sv}"):
        await self.service.manager.jobs.cancel(self.job)

    @signal()
    def Completed(self, success: bool, message: str) -> "bs":
        return [success, message]

    @property
    def path(self) -> str:
        return job_path(self.job.id)
