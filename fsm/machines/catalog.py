"""Every lifecycle of the system, for the graph, the docs, the simulator and the tests."""

from __future__ import annotations

from typing import Any

from fsm.engine.spec import MachineSpec
from fsm.machines import agent_link, ingest_link, session, supervisor, turn, wrapper

ALL: tuple[MachineSpec[Any], ...] = (
    wrapper.SPEC,
    agent_link.SPEC,
    ingest_link.SPEC,
    turn.SPEC,
    session.SPEC,
    supervisor.SPEC,
)

BY_NAME: dict[str, MachineSpec[Any]] = {spec.name: spec for spec in ALL}
