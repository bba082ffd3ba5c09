"""The lifecycles, one module each (see ``fsm.catalog`` for the list)."""
