"""org.example.Storage: storage pools and volumes over D-Bus, authorized by polkit.

Layers (imports point one way only):

    adapter (D-Bus)  ->  core  ->  backends  ->  system

``model`` (pool/volume definitions and their libvirt XML) and ``errors`` are
plain leaf modules that every layer may import; they import nothing of ours
except each other.
"""

__version__ = "0.1.0"
