"""Pieces both hosts share around their cores: JSON logs (``logs``), background work that must
not take the host down (``tasks``), and the garbage-collector settings of a long-running host
(``collector``)."""
