"""``fsm-agent control``: the session side (one SessionCore per session, SQLite, local runtime)."""
