"""Ground-level I/O: files replaced whole (atomic) and the persistent XLA compilation cache.

Imports nothing of the package above ``config``: every layer may use it.
"""
