"""Entry point of ``fsm-agent control``: validate the command line, then run the host."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio

from fsm.config import ConfigError, timer_values
from fsm.control.host import ControlHost, ControlSettings
from fsm.logs import JsonLog
from fsm.serve.settings import load_file, parse_listen


def run_control(
    *,
    listen: str,
    db: Path,
    api_key: str,
    config: Path | None,
    base_dir: Path | None,
    kilo_bin: str | None,
    runtime: str = "local",
) -> int:
    if not api_key:
        print("error: --api-key (or FSM_AGENT_API_KEY) must not be empty", file=sys.stderr)
        return 2
    try:
        host, port = parse_listen(listen)
        load_file(config)  # the same file is handed to wrappers: check it here, once
        values = timer_values(config)["control"]
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    db = db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    settings = ControlSettings(
        db=db,
        api_key=api_key,
        listen_host=host,
        listen_port=port,
        base_dir=(base_dir or db.parent / "sessions").resolve(),
        config=config.resolve() if config else None,
        kilo_bin=kilo_bin,
        runtime="external" if runtime == "external" else "local",
    )
    control = ControlHost(settings, values, JsonLog())

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        control.request_stop()
                        return

            tg.start_soon(on_signals)
            await control.run()
            tg.cancel_scope.cancel()

    anyio.run(main)
    return 0
