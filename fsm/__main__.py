"""``python -m fsm`` runs the ``fsm-agent`` command line (used to start wrappers as children)."""

from fsm.cli.app import main

main()
