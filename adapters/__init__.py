"""Adapters: bindings of the machines' effects to the world (processes, sockets, storage)."""
