"""The ``fsm-agent`` command line: ``app`` (every command), ``simulate`` (``simulate`` and
``check``), ``openapi_files`` (the generated documents)."""
