"""Unit tests of the sans-I/O core: model, validation, engine, clock, timer table, machines, CLI."""
