"""XML snippets and names shared by the bus tests."""

from pathlib import Path

MANAGER_PATH = "/org/example/Storage"
MANAGER = "org.example.Storage.Manager"
POOL = "org.example.Storage.Pool"
VOLUME = "org.example.Storage.Volume"


def dir_pool_xml(name: str, target: Path, mode: str = "0755", uuid: str | None = None) -> str:
    uuid_el = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (f"<pool type='dir'><name>{name}</name>{uuid_el}<target><path>{target}</path>"
            f"<permissions><mode>{mode}</mode></permissions></target></pool>")


def fs_pool_xml(name: str, device: str, target: Path, fmt: str = "ext4") -> str:
    return (f"<pool type='fs'><name>{name}</name><source><device path='{device}'/>"
            f"<format type='{fmt}'/></source><target><path>{target}</path></target></pool>")


def raw_volume_xml(name: str, size: str, unit: str = "bytes", allocation: int | None = None
                   ) -> str:
    alloc = f"<allocation>{allocation}</allocation>" if allocation is not None else ""
    return (f"<volume><name>{name}</name><capacity unit='{unit}'>{size}</capacity>{alloc}"
            "<target><format type='raw'/></target></volume>")
