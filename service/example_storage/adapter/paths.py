"""Object paths of the service (stable: derived from names only)."""

import functools

from ..model.names import encode_path_element

BUS_NAME = "org.example.Storage"
MANAGER_PATH = "/org/example/Storage"
POOLS_PATH = MANAGER_PATH + "/pools"
DEVICES_PATH = MANAGER_PATH + "/devices"
JOBS_PATH = MANAGER_PATH + "/jobs"

MANAGER_IFACE = "org.example.Storage.Manager"
POOL_IFACE = "org.example.Storage.Pool"
VOLUME_IFACE = "org.example.Storage.Volume"
DEVICE_IFACE = "org.example.Storage.Device"
JOB_IFACE = "org.example.Storage.Job"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"


@functools.lru_cache(maxsize=1024)
def pool_path(pool_name: str) -> str:
    return f"{POOLS_PATH}/{encode_path_element(pool_name)}"


def volume_path(pool_name: str, volume_name: str) -> str:
    return f"{pool_path(pool_name)}/volumes/{encode_path_element(volume_name)}"


def device_path(kernel_name: str) -> str:
    """A host block device, by its kernel name ("sda1", "dm-0")."""
    return f"{DEVICES_PATH}/{encode_path_element(kernel_name)}"


def job_path(job_id: int) -> str:
    """A running job, by its number (counted from 1 in each run of the daemon)."""
    return f"{JOBS_PATH}/{job_id}"
