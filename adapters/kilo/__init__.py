"""Bindings to the Kilo server: finding the binary, owning the process, the typed client."""
