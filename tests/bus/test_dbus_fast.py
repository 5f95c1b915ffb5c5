"""The daemon with dbus-fast in place of dbus-next (adapter/bus.py picks it from
EXAMPLE_STORAGE_DBUS): the same scenarios must hold."""

import pytest

from tests.bus import test_bad_input, test_contract, test_dir_pool, test_persistence

pytest.importorskip("dbus_fast")
FAST = pytest.mark.parametrize("svc", ["dbus-fast"], indirect=True)


@FAST
async def test_life_cycle(svc):
    assert "with dbus-fast" in svc.daemon.log()
    await test_dir_pool.test_define_build_start_create_resize_delete(svc)


@FAST
async def test_contract_holds(svc):
    await test_contract.test_introspection_matches_contract(svc)


@FAST
async def test_errors_and_state(svc):
    await test_bad_input.test_wrong_state(svc)
    await test_bad_input.test_wrong_option_type(svc)


@FAST
async def test_restart(svc):
    await test_persistence.test_restart_keeps_pools_states_volumes(svc, "kill9")
