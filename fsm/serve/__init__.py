"""``fsm-agent serve``: the wrapper host, WrapperCore given a body (Kilo, a socket, real time)."""
