"""Durable storage for the control plane: sessions, their machine snapshots, messages, events.

``sqlite`` is the embedded default (one file, WAL). A PostgreSQL store for several control-plane
replicas would offer the same methods; nothing above the store knows which one it talks to.
"""
