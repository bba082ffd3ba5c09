"""Wrapper relay: Kilo's event stream through ``fsm-agent serve`` to the control plane, against a
raw relay with no machines, side by side in the same run.

The pieces, each its own process (this machine has two cores; nothing measured shares an
interpreter with anything else):

* ``bench/fake_kilo.py``: a stdlib-only ``kilo serve`` stand-in (what the wrapper calls at start,
  and ``/event`` as chunked SSE, one chunk per event as Kilo writes them). A bench hook makes it
  emit ``session.turn.open``, N ``message.part.delta`` events stamped with ``time.monotonic()``
  and ``session.turn.close``, as fast as TCP takes them or paced at a given rate.
* ``bench/relay_sink.py``: the control plane's side (``hello`` → ``welcome``, cumulative acks,
  permessage-deflate as uvicorn negotiates it); it records arrival minus the stamp per event.
* The relay under test: ``fsm-agent serve --kilo-bin <fake>`` with its default timers and outbox
  bounds (a prompt is accepted before each burst, so every burst is a streaming turn: each delta
  is progress for a live turn machine and liveness for the agent link, and its frame goes through
  the outbox), or ``bench/relay_raw.py`` on its own fake Kilo: the httpx SSE read → websocket
  send loop the issue names as the baseline, nothing else. (The wrapper itself reads ``/event``
  on a plain socket, ``adapters/kilo/event_stream.py``, and batches what one read brings.)

Each round runs serve then raw (interleaved, so a noisy moment hits both): a burst of ``BURST``
events as fast as possible (throughput, CPU per event, RSS under load), then ``RATE`` events/s
paced for ``PACED_S`` (added latency p50/p99 at the target rate) and a light ``LIGHT_RATE``
stream (latency when nothing queues). Every event is checked in at the sink: a relay that loses
some shows it in the table. Figures are medians over ``RUNS`` rounds.

The machine is shared and has two vCPUs, on which the fake Kilo, the relay and the sink run at
once; waking an idle process costs a lot of CPU there (a relay at 1,000 events/s spends ~250 µs
of CPU per event, mostly waking up), so the paced figures move by a factor of two between runs.
Compare serve with the raw relay of the same run, not with another run.

Start-up: from the wrapper's process start to its "job API listening" line, and to ready
(``wrapper`` ready and ``agent_link`` streaming, as ``/readyz`` says), minus Kilo's own start-up
as the wrapper measured it (spawn to first healthy answer, logged as ``startup``). Real Kilo's
cold start (``start_kilo`` with the binary ``find_kilo`` picks) is measured once, median of 3.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import Figure, cpu_seconds, median, rss_mib

RUNS = 5
BURST = 40_000
RATE = 20_000
PACED_S = 1.0
LIGHT_RATE = 1_000
LIGHT_S = 1.5
KILO_COLD_RUNS = 3
LOSS_WAIT = 15.0
"""Seconds the sink waits for the last events of a burst before counting the rest lost."""
TOKEN = "bench-token"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


# -- processes -------------------------------------------------------------------------------------


class SinkProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.relay_sink"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ingest"

    def cmd(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fake_kilo_exe(tmp: Path, timing: Path | None = None) -> Path:
    """``--kilo-bin`` must be one executable: a shell line running the fake under ``-I -S``.

    ``timing`` is set in the script itself: Kilo gets an allow-listed environment from the
    wrapper, so a variable of the bench's would not reach it."""
    exe = tmp / "kilo"
    env = f"FAKE_KILO_TIMING={shlex.quote(str(timing))} " if timing is not None else ""
    exe.write_text(f'#!/bin/sh\n{env}exec {PY} -I -S {HERE / "fake_kilo.py"} "$@"\n')
    exe.chmod(0o755)
    return exe


def _wait(what: str, check: Any, timeout: float = 20.0, tail: Any = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}\n{tail()}")


def _stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Relay:
    """One relay under test and the fake Kilo feeding it."""

    name = ""
    pid = 0
    kilo_url = ""

    def __init__(self) -> None:
        self.http = httpx.Client(timeout=30)
        self.prompts = 0

    def bench_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.http.get(f"{self.kilo_url}/bench/info").json()
        return info

    def before_burst(self) -> None:
        pass

    def emit(self, n: int, rate: float) -> dict[str, Any]:
        url = f"{self.kilo_url}/bench/emit?n={n}&rate={rate}"
        answer: dict[str, Any] = self.http.post(url, timeout=120).json()
        return answer

    def close(self) -> None:
        self.http.close()


class ServeRelay(Relay):
    name = "serve"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def __init__(self, tmp: Path, sink: SinkProcess) -> None:
        super().__init__()
        tmp.mkdir(parents=True)
        workdir = tmp / "workspace"
        workdir.mkdir()
        config = tmp / "fsm-agent.toml"
        config.write_text("[kilo]\nconfig = {}\n")  # default timers and outbox bounds
        self.log_path = tmp / "wrapper.log"
        self.fake_timing = tmp / "fake.json"
        kilo_exe = fake_kilo_exe(tmp, self.fake_timing)
        token_file = tmp / "token"  # 0600 and removed by the wrapper once read
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        command = [
            PY, "-m", "fsm", "serve",
            "--agent-session", "agent-1", "--user-id", "user-1", "--session-id", "sess-1",
            "--ingest-url", sink.url, "--listen", "127.0.0.1:0",
            "--workdir", str(workdir), "--config", str(config), "--kilo-bin", str(kilo_exe),
            "--state-dir", str(tmp / "kilo-state"), "--token-file", str(token_file),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "FSM_AGENT_TOKEN"}
        with self.log_path.open("wb") as err:
            self.started_wall = time.time()
            self.proc = subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env
            )
        self.pid = self.proc.pid
        try:
            listening = self._log_line(lambda r: r.get("message") == "job API listening")
            self.api = f"http://127.0.0.1:{listening['port']}"
            healthy = self._log_line(lambda r: r.get("message") == "Kilo is healthy")
            self.kilo_url = f"http://127.0.0.1:{healthy['port']}"
            _wait(
                "the wrapper to be ready",
                lambda: self.http.get(f"{self.api}/readyz", headers=self.auth).status_code == 200,
                tail=self.tail,
            )
        except BaseException:
            _stop(self.proc)
            raise
        self.startup = self._startup(listening, healthy)

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def _records(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out

    def _log_line(self, match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the wrapper exited {self.proc.returncode}\n{self.tail()}")
            return next((r for r in self._records() if match(r)), None)

        line: dict[str, Any] = _wait("a wrapper log line", find, tail=self.tail)
        return line

    def _startup(self, listening: dict[str, Any], healthy: dict[str, Any]) -> dict[str, float]:
        records = self._records()

        def reached(machine: str, state: str) -> float:
            return float(
                next(
                    r["time"]
                    for r in records
                    if r.get("machine") == machine
                    and str(r.get("transition", "")).endswith(f"-> {state}")
                )
            )

        ready = max(reached("wrapper", "ready"), reached("agent_link", "streaming"))
        fake = json.loads(self.fake_timing.read_text().splitlines()[-1])
        kilo = float(healthy["startup"])
        return {
            "listening": listening["time"] - self.started_wall,
            "ready": ready - self.started_wall,
            "kilo": kilo,
            "own_ready": ready - self.started_wall - kilo,
            "fake_own": fake["listening"] - fake["started"],
        }

    def before_burst(self) -> None:
        """Each burst is a streaming turn: accept a prompt and let it reach Kilo first."""
        response = self.http.post(
            f"{self.api}/job/prompt",
            json={"prompt": "bench"},
            headers=self.auth,
        )
        response.raise_for_status()
        self.prompts += 1
        _wait("the prompt to reach Kilo", lambda: self.bench_info()["prompts"] >= self.prompts)

    def close(self) -> None:
        _stop(self.proc)
        super().close()


class RawRelay(Relay):
    name = "raw"

    def __init__(self, tmp: Path, sink: SinkProcess, kilo_exe: Path) -> None:
        super().__init__()
        tmp.mkdir(parents=True)
        password = "bench-password"
        port_file = tmp / "kilo.out"
        with port_file.open("wb") as out:
            self.kilo = subprocess.Popen(
                [str(kilo_exe), "serve", "--port", "0", "--hostname", "127.0.0.1"],
                stdout=out,
                env={**os.environ, "KILO_SERVER_PASSWORD": password},
                cwd=tmp,
            )
        try:
            line = _wait("the fake Kilo to listen", lambda: port_file.read_text().strip())
            self.kilo_url = line.rsplit(" ", 1)[1]
            self.proc = subprocess.Popen(
                [PY, "-m", "bench.relay_raw", self.kilo_url, password, sink.url, TOKEN], cwd=ROOT
            )
            self.pid = self.proc.pid
            _wait("the raw relay to subscribe", lambda: self.bench_info()["subscribers"] == 1)
        except BaseException:
            _stop(self.kilo)
            if hasattr(self, "proc"):
                _stop(self.proc)
            raise

    def close(self) -> None:
        _stop(self.proc)
        _stop(self.kilo)
        super().close()


# -- one measurement -------------------------------------------------------------------------------


def burst(relay: Relay, sink: SinkProcess, n: int, rate: float) -> dict[str, float]:
    """Send ``n`` events through ``relay`` (``rate`` 0: as fast as possible); what arrived.

    Events that never arrive are counted (``lost``), not waited for beyond ``LOSS_WAIT``: a
    relay that drops events must show it in the table, not hang the run."""
    sink.cmd(cmd="reset")
    relay.before_burst()
    cpu0 = cpu_seconds(relay.pid)
    rss = [rss_mib(relay.pid)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sending = pool.submit(relay.emit, n, rate)
        while not sending.done():
            rss.append(rss_mib(relay.pid))
            time.sleep(0.01)
        sent = sending.result()
    stats = sink.cmd(cmd="wait", n=n, timeout=LOSS_WAIT)
    rss.append(rss_mib(relay.pid))
    cpu = cpu_seconds(relay.pid) - cpu0
    got = int(stats["events"])
    if not got:
        raise RuntimeError(f"{relay.name}: none of {n} events arrived; sink: {stats}")
    span = float(stats["last_recv"]) - float(stats["first_sent"])
    return {
        "events_per_s": got / span,
        "source_per_s": n / float(sent["seconds"]) if sent["seconds"] else float("nan"),
        "p50_ms": float(stats["p50"]) * 1000,
        "p99_ms": float(stats["p99"]) * 1000,
        "max_ms": float(stats["max"]) * 1000,
        "cpu_us_per_event": cpu / got * 1e6,
        "rss_load": max(rss),
        "lost": float(n - got),
        "out_of_order": float(stats["out_of_order"]),
    }


def measure(relay: Relay, sink: SinkProcess) -> dict[str, float]:
    time.sleep(0.3)  # let start-up work settle before "idle"
    out = {"rss_idle": rss_mib(relay.pid)}
    fast = burst(relay, sink, BURST, 0)
    paced = burst(relay, sink, int(RATE * PACED_S), RATE)
    light = burst(relay, sink, int(LIGHT_RATE * LIGHT_S), LIGHT_RATE)
    out.update({f"fast_{k}": v for k, v in fast.items()})
    out.update({f"paced_{k}": v for k, v in paced.items()})
    out.update({f"light_{k}": v for k, v in light.items()})
    out["rss_load"] = max(fast["rss_load"], paced["rss_load"])
    out["lost"] = fast["lost"] + paced["lost"] + light["lost"]
    return out


def kilo_cold_start(tmp: Path) -> list[float]:
    """Real Kilo, spawn to first healthy answer, as the wrapper starts it."""
    import anyio

    from adapters.kilo.binary import find_kilo
    from adapters.kilo.process import start_kilo

    binary = find_kilo(None)
    workdir = tmp / "kilo-workdir"
    workdir.mkdir()

    async def once() -> float:
        server = await start_kilo(
            workdir=workdir,
            state_dir=tmp / "kilo-state",
            config={},
            kilo_bin=str(binary),
            startup_timeout=60,
        )
        await server.stop(5)
        return server.healthy_after

    return [anyio.run(once) for _ in range(KILO_COLD_RUNS)]


# -- figures ---------------------------------------------------------------------------------------


def _med(rows: list[dict[str, float]], key: str) -> tuple[float, list[float]]:
    values = [row[key] for row in rows]
    return median(values), values


def figures(
    serve: list[dict[str, float]],
    raw: list[dict[str, float]],
    startup: list[dict[str, float]],
    kilo_cold: list[float],
) -> list[Figure]:
    out: list[Figure] = []
    runs = len(serve)

    def pair(
        key: str, name: str, unit: str, target: str = "", meets: Any = None, note: str = ""
    ) -> None:
        value, samples = _med(serve, key)
        base, _ = _med(raw, key)
        out.append(
            Figure(
                "relay",
                name,
                value,
                unit,
                baseline="raw relay",
                baseline_value=base,
                ratio=value / base if base else None,
                target=target,
                meets_target=None if meets is None else bool(meets(value, base)),
                runs=runs,
                note=note,
                samples=samples,
            )
        )

    pair(
        "fast_events_per_s",
        "events/s, as fast as possible",
        "ev/s",
        ">= 20,000 ev/s",
        lambda v, _b: v >= 20_000,
        f"{BURST:,} deltas in a streaming turn; source alone "
        f"{median([r['fast_source_per_s'] for r in serve]):,.0f} ev/s when paced by the relay",
    )
    pair(
        "fast_cpu_us_per_event",
        "CPU per event (relay process)",
        "µs",
        note="user+sys of the relay process over the fast burst / events",
    )
    pair(
        "paced_p50_ms",
        f"added latency p50 at {RATE:,} ev/s",
        "ms",
        note="fake Kilo write → sink receive, same CLOCK_MONOTONIC",
    )
    pair(
        "paced_p99_ms",
        f"added latency p99 at {RATE:,} ev/s",
        "ms",
        "<= 2 ms and <= 1.5x raw",
        lambda v, b: v <= 2.0 and v <= 1.5 * b,
    )
    pair("light_p50_ms", f"added latency p50 at {LIGHT_RATE:,} ev/s", "ms")
    pair(
        "light_p99_ms",
        f"added latency p99 at {LIGHT_RATE:,} ev/s",
        "ms",
        "<= 2 ms and <= 1.5x raw",
        lambda v, b: v <= 2.0 and v <= 1.5 * b,
    )
    pair("rss_idle", "RSS idle", "MiB", "<= 60 MiB", lambda v, _b: v <= 60)
    pair(
        "rss_load",
        "RSS under load",
        "MiB",
        "<= 60 MiB",
        lambda v, _b: v <= 60,
        "highest sample (every 10 ms) over the fast and paced bursts",
    )
    pair(
        "lost",
        "events lost (all bursts of a round)",
        "events",
        "0",
        lambda v, _b: v == 0,
        f"{BURST + int(RATE * PACED_S) + int(LIGHT_RATE * LIGHT_S):,} sent per round",
    )

    kilo_ms = median(kilo_cold) * 1000 if kilo_cold else None

    def startup_figure(key: str, name: str, note: str) -> None:
        values = [row[key] * 1000 for row in startup]
        value = median(values)
        out.append(
            Figure(
                "relay",
                name,
                value,
                "ms",
                baseline="real Kilo cold start" if kilo_ms else "",
                baseline_value=kilo_ms,
                ratio=value / kilo_ms if kilo_ms else None,
                runs=len(values),
                note=note,
                samples=values,
            )
        )

    startup_figure(
        "listening", "wrapper start → job API listening", "process start to its log line"
    )
    seen_ms = median([row["kilo"] for row in startup]) * 1000
    startup_figure(
        "own_ready",
        "wrapper start → ready, minus Kilo's own start",
        f"ready (wrapper ready, event stream up) {median([r['ready'] for r in startup]) * 1000:.0f}"
        f" ms minus the fake Kilo's spawn → healthy as the wrapper timed it {seen_ms:.0f} ms"
        f" (the fake's own code: {median([r['fake_own'] for r in startup]) * 1000:.0f} ms)",
    )
    if kilo_cold:
        out.append(
            Figure(
                "relay",
                "real Kilo cold start (spawn → healthy)",
                median(kilo_cold) * 1000,
                "ms",
                runs=len(kilo_cold),
                note="start_kilo with find_kilo()'s binary; the first run in a fresh state dir",
                samples=[v * 1000 for v in kilo_cold],
            )
        )
    return out


def run() -> list[Figure]:
    serve: list[dict[str, float]] = []
    raw: list[dict[str, float]] = []
    startup: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="fsm-bench-relay-") as tmp_name:
        tmp = Path(tmp_name)
        kilo_exe = fake_kilo_exe(tmp)
        sink = SinkProcess()
        try:
            for i in range(RUNS):
                relay: Relay = ServeRelay(tmp / f"serve{i}", sink)
                try:
                    startup.append(relay.startup)  # type: ignore[attr-defined]
                    serve.append(measure(relay, sink))
                finally:
                    relay.close()
                relay = RawRelay(tmp / f"raw{i}", sink, kilo_exe)
                try:
                    raw.append(measure(relay, sink))
                finally:
                    relay.close()
                s, r = serve[-1], raw[-1]
                print(
                    f"   round {i + 1}: serve {s['fast_events_per_s']:,.0f} ev/s, p99 at "
                    f"{RATE:,}/s {s['paced_p99_ms']:.2f} ms | raw {r['fast_events_per_s']:,.0f} "
                    f"ev/s, {r['paced_p99_ms']:.2f} ms",
                    flush=True,
                )
        finally:
            sink.close()
        try:
            kilo_cold = kilo_cold_start(tmp)
        except Exception as exc:  # no real Kilo here: the rest still stands
            print(f"   real Kilo cold start skipped: {exc!r}", flush=True)
            kilo_cold = []
    return figures(serve, raw, startup, kilo_cold)
