"""The VM lane: Debian's kernel under qemu (TCG) with the host's root over 9p.

``tests.vm.lane`` prepares and boots the guest; ``tests/vm/test_vm_lane.py`` runs the guest
selection (``tests/vm_guest``) in one boot and reports its result to the host's pytest.
"""
