"""Pool and volume definitions (plain dataclasses) and their libvirt-compatible XML.

A leaf package: every layer may import it; it imports only ``example_storage.errors``.
"""
