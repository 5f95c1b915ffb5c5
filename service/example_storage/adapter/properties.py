"""Read-only D-Bus properties generated from one table per interface.

An exported object implements ``property_values()`` (name -> plain value); the
getters, GetManagedObjects, InterfacesAdded and PropertiesChanged all read that one
function, so they can never disagree.
"""

from .bus import PropertyAccess, ServiceInterface, Variant, dbus_property, init_interface


class ExportedObject(ServiceInterface):
    PROPERTIES: tuple[tuple[str, str], ...] = ()   # (name, D-Bus signature)

    def __init__(self, interface_name: str, service) -> None:
        init_interface(self, interface_name)
        self.service = service

    def property_values(self) -> dict[str, object]:
        raise NotImplementedError

    def property_variants(self, values: dict[str, object] | None = None
                          ) -> dict[str, Variant]:
        """The properties as Variants (of ``values`` when the caller already read them)."""
        if values is None:
            values = self.property_values()
        return {name: Variant(sig, values[name]) for name, sig in self.PROPERTIES}

    def auth_details(self) -> dict[str, str]:
        return {}


def _getter(name: str, signature: str):
    def get(self):
        return self.property_values()[name]

    get.__name__ = name
    get.__annotations__ = {"return": signature}
    return get


def with_properties(cls: type[ExportedObject]) -> type[ExportedObject]:
    """Class decorator: add a read-only dbus_property for each entry of PROPERTIES."""
    for name, signature in cls.PROPERTIES:
        prop = dbus_property(access=PropertyAccess.READ, name=name)(_getter(name, signature))
        setattr(cls, name, prop)
    return cls
