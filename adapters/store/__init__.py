"""Durable storage for the control plane: sessions, their machine snapshots, messages, events.

``base.Store`` is the port the control host talks to; ``rows`` the rows and errors every store
shares; ``checks`` the value checks every write runs. ``sqlite`` is the embedded default (one
file, WAL); ``postgres`` the server several control-plane replicas share, with ``leases`` saying
which replica acts for which session. Nothing above the store knows which one it talks to, and
one contract suite (tests/adapters/store/) runs against both.
"""
