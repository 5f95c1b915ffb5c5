"""The polkit actions (policy/org.example.storage.policy)."""

POOL_DEFINE = "org.example.storage.pool.define"
POOL_DISCOVER = "org.example.storage.pool.discover"
POOL_START_STOP = "org.example.storage.pool.start-stop"
POOL_BUILD = "org.example.storage.pool.build"
POOL_DELETE = "org.example.storage.pool.delete"
VOLUME_MANAGE = "org.example.storage.volume.manage"
VOLUME_DELETE = "org.example.storage.volume.delete"
