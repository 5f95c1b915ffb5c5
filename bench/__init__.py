"""Benchmarks of org.example.Storage against libvirt-dbus (``python -m bench``)."""
