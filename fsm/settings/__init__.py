"""What an operator sets: the TOML file (``file``, ``config``), timers, input bounds (``limits``),
the container runtime (``runtime``), the listen address (``listen``) and secrets read without
argv (``secrets``). Both hosts and every command load them the same way."""
