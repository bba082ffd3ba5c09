"""fsm-agent: lifecycles of sandboxed coding agents as explicit, declarative state machines."""
