"""Every exported method declares its polkit action (or that it is public), and the
declaration is the one its documentation in introspection/ states."""

import re

import pytest
from example_storage.adapter.calls import AUTH_ATTRIBUTE, OWNER_EXEMPT_ATTRIBUTE, PUBLIC
from example_storage.adapter.device_iface import DeviceInterface
from example_storage.adapter.job_iface import JobInterface
from example_storage.adapter.manager_iface import ManagerInterface
from example_storage.adapter.pool_iface import PoolInterface
from example_storage.adapter.volume_iface import VolumeInterface

from tests.contract.introspection import contract, documented_action

INTERFACES = {
    "org.example.Storage.Manager": ManagerInterface,
    "org.example.Storage.Pool": PoolInterface,
    "org.example.Storage.Volume": VolumeInterface,
    "org.example.Storage.Device": DeviceInterface,
    "org.example.Storage.Job": JobInterface,
}
CONTRACT = contract()
METHODS = [
    (iface, m.name) for iface, i in CONTRACT.items() for m in i.members.values()
    if m.kind == "method"
]


def test_every_interface_has_a_class():
    assert set(CONTRACT) == set(INTERFACES)


@pytest.mark.parametrize(("iface", "member"), METHODS)
def test_method_declares_the_documented_action(iface, member):
    fn = getattr(INTERFACES[iface], member)
    # the dbus-next wrapper keeps the function; find our mark on it or below it
    target = fn
    while target is not None and not hasattr(target, AUTH_ATTRIBUTE):
        target = getattr(target, "__wrapped__", None) or getattr(target, "__func__", None)
    assert target is not None, f"{iface}.{member} has no @authorized/@public mark"
    declared = getattr(target, AUTH_ATTRIBUTE)
    documented = documented_action(CONTRACT[iface].members[f"method:{member}"])
    assert documented is not None, f"{iface}.{member}: doc lacks 'Polkit action:'"
    assert declared == documented, f"{iface}.{member}: code says {declared}, doc {documented}"
    # a method the object's owner (a job's starter) may call without the action says so
    doc = CONTRACT[iface].members[f"method:{member}"].doc
    exempt = getattr(target, OWNER_EXEMPT_ATTRIBUTE, False)
    assert exempt == ("not needed by the job's starter" in " ".join(doc.split())), (
        f"{iface}.{member}: owner exemption in code ({exempt}) and doc disagree")


def test_documented_actions_exist_in_the_policy():
    from pathlib import Path

    policy = (Path(__file__).resolve().parents[2] / "policy/org.example.storage.policy").read_text()
    policy_actions = set(re.findall(r'<action id="([^"]+)"', policy))
    used = {
        documented_action(m) for i in CONTRACT.values() for m in i.members.values()
        if m.kind == "method"
    } - {PUBLIC}
    assert used <= policy_actions
    assert policy_actions <= used, f"unused actions: {policy_actions - used}"


def test_every_member_is_documented():
    for iface in CONTRACT.values():
        for m in iface.members.values():
            assert m.doc.strip(), f"{iface.name}.{m.name} has no documentation"
