"""``fsm-agent demo``: the whole loop on one machine, with a scripted model when no credentials."""
