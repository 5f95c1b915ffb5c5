"""Answers the read-only standard calls on our objects straight from ObjectTree's records.

Both D-Bus libraries answer ``ObjectManager.GetManagedObjects`` by asking every exported
interface for its properties one property at a time (``property_values()`` once per
property: ten times per volume), and dbus-next rescans the whole result after each object:
listing 10,000 volumes took 2-20 s. Here:

- ``GetManagedObjects`` on the manager's path: every object below it with all its
  properties, each object's ``property_values()`` read once, the body marshalled object by
  object and reused while an object is unchanged (managed_objects.py). The answer is the
  one the library gives: tests/bus/test_managed_objects.py compares it with the library's
  own answer for ``/``, a path the library still answers.
- ``Properties.GetAll`` / ``Properties.Get`` of one of our objects' own interface and
  properties: ``property_values()`` once, without the library's per-property dispatch.
- ``Introspectable.Introspect`` of a volume, device or job (objects that never have
  anything below them): the library's XML for the object's class, made once, with the
  path put in. The library scans every exported path for child nodes on each Introspect
  (6-10 ms per call at 10,000 volumes with dbus-next), and dbus-next lists a bogus child
  ``0`` for a volume ``v1`` when a volume ``v10`` exists (its test is a plain prefix).

Anything else (another path or interface, an unknown property, a wrong signature, Set,
Introspect of the manager or a pool) goes to the library, so its errors stay the
library's. A failure while reading properties becomes an ``org.example.Storage.Error.*``
reply, never a traceback.
"""

from .bus import Message, MessageFlag, MessageType, Variant, leaf_introspection
from .calls import to_dbus_error
from .device_iface import DeviceInterface
from .job_iface import JobInterface
from .managed_objects import SIGNATURE, ManagedObjectsBody
from .objects import ObjectTree
from .paths import MANAGER_PATH, OBJECT_MANAGER_IFACE
from .properties import ExportedObject
from .volume_iface import VolumeInterface

PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
INTROSPECTABLE_IFACE = "org.freedesktop.DBus.Introspectable"
# objects with nothing ever exported below their path
LEAVES = (VolumeInterface, DeviceInterface, JobInterface)
_TEMPLATE_PATH = "/introspection/template"


class DirectReplies:
    """A bus message handler (``bus.add_message_handler``): for the calls it answers it
    returns the reply (which the library sends) or True (sent itself, or no reply wanted);
    None for every other message, which the library then handles."""

    def __init__(self, tree: ObjectTree, manager_object: ExportedObject) -> None:
        self.tree = tree
        self.manager_object = manager_object
        self.managed_objects_body = ManagedObjectsBody(tree)
        self._introspection: dict[type, tuple[str, str]] = {}   # class -> XML around the path

    def __call__(self, msg: Message) -> Message | bool | None:
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        if msg.interface == PROPERTIES_IFACE:
            return self._properties(msg)
        if (msg.interface == OBJECT_MANAGER_IFACE and msg.member == "GetManagedObjects"
                and msg.path == MANAGER_PATH):
            return self._managed_objects(msg)
        if (msg.interface == INTROSPECTABLE_IFACE and msg.member == "Introspect"
                and msg.signature == ""):
            return self._introspect(msg)
        return None

    def _introspect(self, msg: Message) -> Message | bool | None:
        obj = self.tree.objects.get(msg.path)
        if not isinstance(obj, LEAVES):
            return None
        template = self._introspection.get(type(obj))
        if template is None:
            xml = leaf_introspection(_TEMPLATE_PATH, [obj])
            before, _, after = xml.partition(f'"{_TEMPLATE_PATH}"')
            template = self._introspection[type(obj)] = (before, after)
        # object paths need no XML escaping: [A-Za-z0-9_/] only
        return _reply(msg, "s", lambda: f'{template[0]}"{msg.path}"{template[1]}')

    def _managed_objects(self, msg: Message) -> bool:
        try:
            body = self.managed_objects_body()
        except Exception as e:
            raise to_dbus_error(e) from None
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self.tree.bus.send_method_return(msg, SIGNATURE, body)
        return True

    def _properties(self, msg: Message) -> Message | bool | None:
        obj = self._object(msg.path)
        if obj is None or not msg.body or msg.body[0] != obj.name:
            return None
        if msg.member == "GetAll" and msg.signature == "s":
            return _reply(msg, "a{sv}", obj.property_variants)
        if msg.member == "Get" and msg.signature == "ss":
            name = msg.body[1]
            signature = dict(obj.PROPERTIES).get(name)
            if signature is None:
                return None            # the library's UnknownProperty error
            return _reply(msg, "v", lambda: Variant(signature, obj.property_values()[name]))
        return None

    def _object(self, path: str | None) -> ExportedObject | None:
        if path == MANAGER_PATH:
            return self.manager_object
        return self.tree.objects.get(path)


def _reply(msg: Message, signature: str, value) -> Message | bool:
    """The method return carrying ``value()``; True (handled, nothing to send) when the
    caller asked for no reply. A failure is raised as a D-Bus error, which both libraries
    send back as the error reply."""
    try:
        body = [value()]
    except Exception as e:
        raise to_dbus_error(e) from None
    if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
        return True
    return Message.new_method_return(msg, signature, body)
