"""`--runtime external`: the control plane starts nothing; whoever creates a session gets the
wrapper's ingest URL and token and starts `fsm-agent serve` itself (an orchestrator, here the test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.control_process import running_control, wait_for
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.wrapper_process import git_workspace

pytestmark = pytest.mark.kilo

TIMERS = {"ingest_heartbeat": "1s", "ingest_backoff_initial": "100ms", "agent_stop_grace": "1s"}


def test_an_externally_started_wrapper_serves_the_session(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    with running_control(
        tmp_path, fake_llm.provider_config(), TIMERS, extra_args=["--runtime", "external"]
    ) as control:
        created = control.http.post("/sessions", json={}).json()
        sid, wrapper = created["id"], created["wrapper"]
        assert wrapper["ingest_url"].endswith(f"/ingest/{sid}") and len(wrapper["token"]) > 20
        assert not (tmp_path / "sessions" / "logs").exists()  # nothing was started for it
        workdir = git_workspace(tmp_path / "external-workspace")
        with (tmp_path / "external-wrapper.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fsm",
                    "serve",
                    f"--agent-session=agent_{sid}",
                    "--user-id=u1",
                    f"--session-id={sid}",
                    f"--ingest-url={wrapper['ingest_url']}",
                    f"--workdir={workdir}",
                    f"--config={control.config}",
                ],
                env={**os.environ, "FSM_AGENT_TOKEN": wrapper["token"]},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            mid = control.send(sid, "say hello MODE:text")
            done = control.wait_message(sid, mid, ("completed", "failed", "cancelled"))
            assert done["state"] == "completed", done
            # Stopping the session releases the wrapper through its socket: it exits cleanly.
            assert control.http.delete(f"/sessions/{sid}").status_code == 202
            assert process.wait(timeout=60) == 0
            # Its hang-up is the exit this side can see: the session is gone well before the
            # 30 s stop grace would have ended it.
            wait_for(
                "the session to be gone",
                lambda: control.http.get(f"/sessions/{sid}").status_code == 404,
                timeout=10,
                tail=control.tail,
            )
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
