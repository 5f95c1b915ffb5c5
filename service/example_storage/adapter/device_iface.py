"""org.example.Storage.Device: one object per host block device
(introspection/org.example.Storage.Device.xml)."""

from .paths import DEVICE_IFACE, device_path, pool_path
from .properties import ExportedObject, with_properties

NO_OBJECT = "/"


@with_properties
class DeviceInterface(ExportedObject):
    PROPERTIES = (
        ("Name", "s"), ("Path", "s"), ("MajorMinor", "s"), ("Size", "t"), ("Type", "s"),
        ("ReadOnly", "b"), ("Removable", "b"), ("WWN", "s"), ("Serial", "s"),
        ("Vendor", "s"), ("Model", "s"), ("FsType", "s"), ("FsUsage", "s"), ("FsUUID", "s"),
        ("FsLabel", "s"), ("PartitionTableType", "s"), ("PartitionTableUUID", "s"),
        ("PartUUID", "s"), ("PartLabel", "s"), ("PartType", "s"), ("PartNumber", "u"),
        ("Parent", "o"), ("Holders", "ao"), ("Slaves", "ao"), ("InUse", "b"),
        ("InUseReasons", "as"), ("Pool", "o"), ("MountPoints", "as"), ("Symlinks", "as"),
        ("DmName", "s"), ("DmUUID", "s"), ("Multipath", "o"), ("BackingFile", "s"),
        ("ScsiAddress", "s"),
    )

    def __init__(self, device, service) -> None:
        super().__init__(DEVICE_IFACE, service)
        self.device = device   # core.device_model.BlockDevice; replaced on each change

    @property
    def path(self) -> str:
        return device_path(self.device.name)

    def property_values(self) -> dict[str, object]:
        d = self.device
        return {
            "Name": d.name, "Path": d.path, "MajorMinor": d.major_minor, "Size": d.size,
            "Type": d.type, "ReadOnly": d.read_only, "Removable": d.removable,
            "WWN": d.wwn, "Serial": d.serial, "Vendor": d.vendor, "Model": d.model,
            "FsType": d.fs_type, "FsUsage": d.fs_usage, "FsUUID": d.fs_uuid,
            "FsLabel": d.fs_label, "PartitionTableType": d.pt_type,
            "PartitionTableUUID": d.pt_uuid, "PartUUID": d.part_uuid,
            "PartLabel": d.part_label, "PartType": d.part_type, "PartNumber": d.part_number,
            "Parent": device_path(d.parent) if d.parent else NO_OBJECT,
            "Holders": [device_path(n) for n in d.holders],
            "Slaves": [device_path(n) for n in d.slaves],
            "InUse": d.in_use, "InUseReasons": list(d.in_use_reasons),
            "Pool": pool_path(d.pool) if d.pool else NO_OBJECT,
            "MountPoints": list(d.mount_points), "Symlinks": list(d.symlinks),
            "DmName": d.dm_name, "DmUUID": d.dm_uuid,
            "Multipath": device_path(d.multipath) if d.multipath else NO_OBJECT,
            "BackingFile": d.backing_file, "ScsiAddress": d.scsi_address,
        }

    def auth_details(self) -> dict[str, str]:
        return {"device": self.device.path}
