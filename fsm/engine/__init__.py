"""The reusable state-machine engine: knows nothing of Kilo, wrappers, sessions or the wire.

A machine is data (``model``: states, transitions, timers, budgets), bound to its few functions
(``spec``) and checked at import (``validate``); ``machine`` runs one on the ``transitions``
library, ``runner`` runs a group of them and owns their timers on a ``clock`` (real or virtual).
``effects`` and ``events`` are the vocabulary between machines and hosts, ``timer_table`` and
``durations`` the typed timer settings, ``graph`` draws a machine. Nothing here imports the rest
of ``fsm`` (``tests/test_import_graph.py`` keeps it so).
"""
