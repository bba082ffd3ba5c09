"""Runtimes: where wrappers (``fsm-agent serve``) run — local processes now, sandboxes later.

``base`` holds the port the control plane talks to; ``local`` is the embedded default.
"""
