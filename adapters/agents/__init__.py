"""The agent port: what the wrapper needs of an agent server; Kilo and OpenCode adapt to it."""
