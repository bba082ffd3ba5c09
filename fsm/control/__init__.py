"""The control side (``fsm-agent control``): its sans-I/O ``core`` (one SessionCore per session)
beside its ``host`` (store, runtime, sockets), the REST/SSE ``api``, views and metrics."""
