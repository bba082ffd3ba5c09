"""The environment a child of ours inherits by name: the part both the wrapper (started by the
local runtime) and Kilo (started by the wrapper) need, declared once.

Both children start from an allow-list, never from our own environment: ours holds secrets (the
control plane's API key, the wrapper's token) and the agent runs arbitrary code in the child.
"""

from __future__ import annotations

LOGIN_ENV = frozenset(
    {
        # What a shell and its tools need to work like a login session: where programs are, whose
        # home, which shell, language/encoding, time zone and where temp files go.
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        # Paths of extra CA certificates (a provider behind a private CA or a TLS-inspecting
        # proxy): without them every model request fails TLS. Paths, not secrets.
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "NODE_EXTRA_CA_CERTS",
    }
)
LOCALE_PREFIX = "LC_"
"""Locale categories, inherited by prefix."""
