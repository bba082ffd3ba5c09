"""The live dashboard of the machines, served by ``fsm-agent control`` at ``/ui``
(``docs/dashboard.md``): ``routes.ui_routes`` is what the API registers."""
