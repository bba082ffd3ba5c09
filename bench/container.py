"""Containers: a session's wrapper as a real container, from create to ready, against
``docker run`` of the same image with a no-op command plus Kilo's own start, measured in the
same rounds.

Each round, interleaved so that a noisy moment hits both sides:

* the baseline: ``docker run --rm --network host --entrypoint /bin/true <image>`` (what the
  daemon costs to make, start and reap a container of this image);
* Kilo alone: ``docker run`` of the same image with Kilo itself as the command (as root, on a
  free loopback port) until ``/global/health`` answers, then its first session (Kilo's instance
  bootstrap) — docker run + Kilo's own start, measured as one, with no wrapper beside it;
* the measured: ``DockerRuntime.start`` (create, start: labels, mounts, the token file) of a
  wrapper whose ingest is a test endpoint on loopback, until the wrapper is ready (its lifecycle
  frames ``wrapper → ready`` and ``agent_link → streaming`` arrived); Kilo's own start is what
  the wrapper logged for it in that same container (spawn to first healthy answer). The goal:
  create → ready ≤ 1.2x (no-op run + Kilo's start). Since the wrapper spawns Kilo before its own
  imports (``fsm.serve.launch``), Kilo's start as the wrapper logs it shares the CPU with those
  imports; so the goal is judged against Kilo alone (the line above), which nothing slows.

The wrapper's memory inside the container is its RSS (``/proc/<pid>/status`` of the host pid
``docker top`` shows) once ready and idle; the goal is ≤ 60 MiB.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from adapters.runtime.base import WrapperSpec
from adapters.runtime.docker import DockerRuntime
from adapters.runtime.image import ensure_image
from bench.common import Figure, median
from fsm.settings.runtime import RuntimeSettings
from tests.fakes.fake_llm import running_fake_llm
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import write_config

RUNS = 5


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _noop_run(image: str) -> float:
    started = time.monotonic()
    _docker("run", "--rm", "--network", "host", "--entrypoint", "/bin/true", image)
    return time.monotonic() - started


def _kilo_alone(image: str, kilo_config: dict[str, Any]) -> tuple[float, float]:
    """``docker run`` → healthy, and healthy → first session, of Kilo alone in the image, with
    the environment the wrapper gives it (``QUIET_ENV``, the same provider config, fresh homes):
    an unquiet Kilo fetches models and checks for updates, and would make a slower baseline."""
    import secrets
    import socket

    import httpx

    from adapters.kilo.process import QUIET_ENV

    env = {
        **QUIET_ENV,
        "KILO_SERVER_PASSWORD": secrets.token_urlsafe(16),
        "KILO_CONFIG_CONTENT": json.dumps(kilo_config),
        **{f"XDG_{n}_HOME": f"/kilo/{n.lower()}" for n in ("DATA", "CACHE", "STATE")},
        "XDG_CONFIG_HOME": "/opt/kilo/config",  # the image's prepared, read-only config home
    }
    # Kilo's homes on a host directory, as the runtime mounts a session's state: its database
    # on the container's overlay file system would be slower than the wrapper's Kilo has it.
    home = tempfile.mkdtemp(prefix="fsm-bench-kilo-")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    password = env["KILO_SERVER_PASSWORD"]
    name = f"fsm-bench-kilo-{port}"
    started = time.monotonic()
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--network", "host", "--user", "root",
         *[f"--env={k}={v}" for k, v in env.items()], "--workdir", "/workspace",
         "--volume", f"{home}:/kilo",
         "--entrypoint", "/opt/kilo/bin/kilo",
         image, "serve", "--port", str(port), "--hostname", "127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", auth=("kilo", password), trust_env=False
        ) as client:
            while True:
                if time.monotonic() - started > 60:
                    raise RuntimeError("Kilo alone was not healthy within 60 s")
                try:
                    if client.get("/global/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
            healthy = time.monotonic() - started
            client.post("/session", json={}, timeout=30).raise_for_status()
            return healthy, time.monotonic() - started - healthy
    finally:
        subprocess.run(["docker", "kill", name], capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", home], check=False)


def _kilo_startup(container: str) -> tuple[float, float]:
    """Kilo's spawn → healthy as the wrapper logged it, and healthy → the wrapper's agent_ready
    (Kilo's first session request: Kilo boots its project instance there)."""
    done = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    healthy: dict[str, float] | None = None
    for raw in (done.stdout + done.stderr).splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if record.get("message") == "Kilo is healthy" and "startup" in record:
            healthy = record
        elif (
            healthy is not None
            and record.get("machine") == "wrapper"
            and record.get("trigger") == "agent_ready"
        ):
            return float(healthy["startup"]), float(record["time"]) - float(healthy["time"])
    raise RuntimeError(f"no 'Kilo is healthy' then agent_ready in the logs of {container}")


def _wrapper_rss_mib(container: str, fsm_uid: str) -> float:
    for row in _docker("top", container, "-eo", "pid,user,args").splitlines()[1:]:
        pid, user, args = row.split(None, 2)
        if user in (fsm_uid, "fsm") and " serve" in args:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    raise RuntimeError(f"no wrapper process in {container}")


async def _one(
    runtime: DockerRuntime, image: str, tmp: Path, config: Path, i: int
) -> dict[str, float]:
    ingest = FakeIngest(token=f"bench-token-{i}")
    ingest.start()
    try:
        sid = f"bench{i}"
        workdir = tmp / f"ws{i}"
        workdir.mkdir()
        spec = WrapperSpec(
            session_id=sid,
            agent_session=f"agent_{sid}",
            user_id="bench",
            ingest_url=ingest.url,
            token=ingest.token,
            workdir=workdir,
            config=config,
        )
        started = time.monotonic()
        await runtime.start(spec)
        created = time.monotonic() - started

        def ready() -> bool:
            return "ready" in ingest.lifecycle("wrapper") and "streaming" in ingest.lifecycle(
                "agent_link"
            )

        while not ready():
            if time.monotonic() - started > 120:
                raise RuntimeError("the wrapper was not ready within 120 s")
            await anyio.sleep(0.01)
        elapsed = time.monotonic() - started
        container = runtime.container(sid) or ""
        labels = json.loads(_docker("inspect", image))[0]["Config"]["Labels"]
        await anyio.sleep(1.0)  # idle: what it holds between turns
        rss = _wrapper_rss_mib(container, labels["io.fsm-agent.fsm-uid"])
        kilo, first_session = _kilo_startup(container)
        await runtime.stop(sid, 10.0)
        return {
            "ready": elapsed,
            "create": created,
            "kilo": kilo,
            "session": first_session,
            "rss": rss,
        }
    finally:
        ingest.close()


def run() -> list[Figure]:
    image = ensure_image(log=lambda _line: None)
    rounds: list[dict[str, float]] = []
    with running_fake_llm() as llm, tempfile.TemporaryDirectory(prefix="fsm-bench-ctr-") as t:
        tmp = Path(t)
        config = write_config(tmp / "fsm-agent.toml", {}, llm.provider_config())

        async def main() -> None:
            async with DockerRuntime(
                RuntimeSettings(network="host"),
                lambda *_a: None,
                state_dir=tmp / "state",
                image=image,
            ) as runtime:
                for i in range(RUNS):
                    noop = _noop_run(image)
                    alone, alone_session = _kilo_alone(image, llm.provider_config())
                    row = await _one(runtime, image, tmp, config, i)
                    rounds.append(
                        {**row, "noop": noop, "alone": alone, "alone_session": alone_session}
                    )

        anyio.run(main)
    ready = median([r["ready"] for r in rounds])
    noop = median([r["noop"] for r in rounds])
    kilo = median([r["kilo"] for r in rounds])
    alone = median([r["alone"] for r in rounds])
    alone_session = median([r["alone"] + r["alone_session"] for r in rounds])
    baseline = alone
    ratio = ready / baseline
    rss = max(r["rss"] for r in rounds)
    session = median([r["session"] for r in rounds])
    created = median([r["create"] for r in rounds]) * 1000
    logged = noop + kilo
    note = (
        f"median of {RUNS}; create → started {created:.0f} ms; against no-op run + Kilo's start"
        f" as the wrapper logged it ({logged * 1000:.0f} ms): {ready / logged:.2f}x; against Kilo"
        f" alone up to its first session ({alone_session * 1000:.0f} ms, which the wrapper also"
        f" waits for): {ready / alone_session:.2f}x"
    )
    return [
        Figure(
            "container",
            "container create → wrapper ready",
            round(ready * 1000, 1),
            "ms",
            baseline="docker run of Kilo alone → healthy (docker run + Kilo's own start)",
            baseline_value=round(baseline * 1000, 1),
            ratio=round(ratio, 2),
            target="<= 1.2x (docker run + Kilo start)",
            meets_target=ratio <= 1.2,
            runs=RUNS,
            note=note,
            samples=[r["ready"] for r in rounds],
        ),
        Figure(
            "container",
            "docker run of the image, no-op command",
            round(noop * 1000, 1),
            "ms",
            runs=RUNS,
            samples=[r["noop"] for r in rounds],
        ),
        Figure(
            "container",
            "Kilo's own start in the container (spawn → healthy)",
            round(kilo * 1000, 1),
            "ms",
            runs=RUNS,
            note="as the wrapper measured it, in the measured containers",
            samples=[r["kilo"] for r in rounds],
        ),
        Figure(
            "container",
            "Kilo's first session request after healthy (its instance bootstrap)",
            round(session * 1000, 1),
            "ms",
            runs=RUNS,
            note=f"against no-op run + Kilo's start including it: "
            f"{ready / (baseline + session):.2f}x; the wrapper waits for it before ready",
            samples=[r["session"] for r in rounds],
        ),
        Figure(
            "container",
            "wrapper RSS in the container (idle, after ready)",
            round(rss, 1),
            "MiB",
            target="<= 60 MiB",
            meets_target=rss <= 60,
            runs=RUNS,
            note="highest of the rounds; the wrapper process alone (not the supervisor, not Kilo)",
            samples=[r["rss"] for r in rounds],
        ),
    ]


def _main() -> None:
    for figure in run():
        print(figure.name, figure.value, figure.unit, figure.ratio or "", figure.note)


if __name__ == "__main__":
    _main()
