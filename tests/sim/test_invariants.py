"""The user-visible truth, checked: the invariants catch the old "told failed, but it ran" rule.

``old_rule`` puts the pre-issue-13 behaviour back into ``SessionCore`` for one test: a message is
``accepted`` the moment its prompt is handed to the host, and a prompt that cannot be sent is
held for whichever wrapper says hello next. On that rule a prompt held for a wrapper that is then
replaced fails (``connection_lost``) and still runs on the replacement; the ``after_end`` and
``agree`` invariants must say so, in a scripted scenario and in random schedules, and nothing may
be said on the code as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fsm.control.core import CONNECTED, Message, SessionCore
from fsm.engine.events import Event
from fsm.sim.fuzz import fuzz_many
from fsm.sim.run import mutated, run_scenario
from fsm.sim.scenario import Removal, load_scenario, parse_scenario
from fsm.wire.protocol import Frame, PromptCommand

SCENARIOS = Path(__file__).parent.parent / "scenarios"
HELD = SCENARIOS / "held_prompt_replaced_wrapper.toml"


@pytest.fixture
def old_rule(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    prompt = SessionCore._prompt

    def accept_on_send(self: SessionCore, message: Message) -> PromptCommand:
        command = prompt(message)
        if message.state == "queued":
            self._set(message, "accepted")
            self.group.send(self.machine.machine_id, Event("message_accepted", {"id": message.id}))
        return command

    def hold_everything(self: SessionCore, frame: Frame) -> None:
        self._held.append((None, frame))

    def release_to_anyone(self: SessionCore) -> list[Frame]:
        held, self._held = self._held, []
        frames = [frame for _wrapper, frame in held]
        if self.machine.state in CONNECTED:
            frames.extend(self._prompt(m) for m in self.messages.values() if m.state == "queued")
        return frames

    monkeypatch.setattr(SessionCore, "_prompt", accept_on_send)
    monkeypatch.setattr(SessionCore, "hold", hold_everything)
    monkeypatch.setattr(SessionCore, "commands_after_welcome", release_to_anyone)
    yield


def test_the_held_prompt_scenario_keeps_every_invariant() -> None:
    result = run_scenario(load_scenario(HELD))
    assert result.passed, [str(v) for v in result.violations]


@pytest.mark.usefixtures("old_rule")
def test_the_invariants_catch_the_old_rule_in_the_held_prompt_scenario() -> None:
    result = run_scenario(load_scenario(HELD))
    caught = {v.invariant for v in result.violations}
    assert {"after_end", "agree"} <= caught, [str(v) for v in result.violations]
    detail = " ".join(str(v) for v in result.violations)
    assert "started after the control plane ended it 'failed' (connection_lost)" in detail
    assert "but its wrapper reported 'completed'" in detail


@pytest.mark.usefixtures("old_rule")
def test_the_fuzzer_finds_the_old_rule_on_its_own() -> None:
    report = fuzz_many(300, seed=1)
    assert report.failure is not None
    assert report.failure.violation.invariant in ("after_end", "agree"), report.render()


def test_the_fuzzer_passes_on_the_same_schedules() -> None:
    report = fuzz_many(300, seed=1)
    assert report.failure is None, report.render()


def test_the_hung_backstop_catches_a_wrapper_whose_clock_is_broken() -> None:
    """The backstop's reason to exist: a wrapper that heartbeats but whose turn never gives up
    (its no-progress verdict removed) is aborted by the control plane at 16.5 min of silence;
    the wrapper's answer, ``cancelled``, ends the message failed ``no_progress`` (no late,
    ignored outcome; ``agree`` allows the cancelled echo of this side's abort)."""
    text = """
name = "backstop"
until = "20m"
[[step]]
at = "10s"
do = "prompt"
message = "m1"
plan = ["text 5s", "stall"]
[[expect]]
kind = "outcome"
message = "m1"
status = "failed"
reason = "no_progress"
within = ["16m45s", "16m46s"]
[[expect]]
kind = "state"
machine = "turn:m1"
at = "16m50s"
is = "cancelled"
[[expect]]
kind = "metric"
metric = "ignored_outcomes"
equals = 0
"""
    with mutated([Removal("turn", "no_progress", "running", "failed")]):
        result = run_scenario(parse_scenario(text, "backstop.toml"))
    assert all(r.passed for r in result.results), [str(r) for r in result.results]
    # The removed verdict itself is the one violation: its timer expires and nothing takes it.
    assert {v.invariant for v in result.violations} == {"timer_owner"}


DRAIN = SCENARIOS / "prompt_during_abort_drain.toml"


@pytest.fixture
def every_close_to_every_turn(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The wrapper before runs were tracked: every Kilo event, a close included, went to every
    open turn, and a prompt was handed to Kilo even while it drained an abort."""
    from fsm.serve.core import WrapperCore

    monkeypatch.setattr(WrapperCore, "_targets", lambda self, _trigger: self.active_turns())
    monkeypatch.setattr(
        WrapperCore,
        "_dispatch",
        lambda self, machine: self.group.send(machine.machine_id, Event("dispatch")),
    )
    yield


def test_the_drain_scenario_keeps_every_invariant() -> None:
    result = run_scenario(load_scenario(DRAIN))
    assert result.passed, [str(v) for v in result.violations]


@pytest.mark.usefixtures("every_close_to_every_turn")
def test_own_turn_catches_a_prompt_ended_by_an_aborted_turns_late_close() -> None:
    result = run_scenario(load_scenario(DRAIN))
    found = {v.invariant for v in result.violations}
    assert "own_turn" in found, [str(v) for v in result.violations]
    assert any("m2" in str(v) and "nobody cancelled it" in str(v) for v in result.violations)


@pytest.mark.usefixtures("every_close_to_every_turn")
def test_random_schedules_find_the_late_close_alone() -> None:
    report = fuzz_many(300, seed=1)
    assert report.failure is not None
    assert report.failure.violation.invariant == "own_turn", report.render()
