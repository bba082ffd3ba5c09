"""The sans-I/O half of the agent port: how each agent's event stream opens and closes a turn."""
