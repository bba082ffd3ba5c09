"""The sans-I/O half of the agent port: what an agent's events mean for a turn (``events``, on
the ``AGENT_EVENTS`` table of ``fsm.machines.turn``) and how each agent's stream opens and closes
a turn (``dialect``: Kilo brackets its turns, OpenCode does not)."""
