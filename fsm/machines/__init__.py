"""The lifecycles, one module each (see ``fsm.machines.catalog`` for the list)."""
