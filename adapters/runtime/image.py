"""The wrapper image, built only when what goes into it changed.

``ensure_image()`` returns the tag ``fsm-agent-wrapper:<hash12>`` of an image built from
``docker/Dockerfile`` (also tagged ``fsm-agent-wrapper:latest``). The hash is over everything the
image is made of: the Dockerfile, the project's source files and ``pyproject.toml``, the pinned
runtime dependencies (the versions installed in this environment), the Kilo binary directory and
the base image's id. An image with that tag already present means nothing changed: no wheel is
built and ``docker build`` is not run, so the call costs the hashing (about half a second, most
of it Kilo's 160 MB binary) and one ``docker image inspect``.

Offline by construction: the base is built from Debian packages (``docker/base.sh``, mmdebstrap +
``docker import``) when it is missing; wheels are built on this host (``pip wheel``: the project
with ``--no-deps``, its dependencies pinned to the versions installed here) and installed in the
image with ``--no-index``; Kilo is the binary ``just setup`` installed from npm. The build context
holds only those (files hard-linked where possible) and the Dockerfile, so it is sent in a second.

The Docker CLI is used, not the Engine API: ``docker build`` packs the context and streams the
build, and nothing here runs inside the control plane's event loop.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from adapters.agents.base import PROJECT_ROOT
from adapters.agents.registry import agent_spec
from adapters.kilo.binary import find_agent

IMAGE_AGENT = agent_spec(None)
"""The agent the image carries (``docker/Dockerfile`` installs the default agent, Kilo, at
``/opt/kilo``); its binary is staged from where ``find_agent`` finds it."""
BASE_IMAGE = "fsm-agent-base:bookworm"
"""The offline base (``docker/base.sh``); a public ``python:3.11-slim-bookworm`` also works."""
WRAPPER_REPOSITORY = "fsm-agent-wrapper"
LATEST = f"{WRAPPER_REPOSITORY}:latest"
HASH_LABEL = "io.fsm-agent.content-hash"
SOURCE_DIRS = ("fsm", "adapters")
SOURCE_SUFFIXES = (".py", ".typed")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


class ImageBuildError(Exception):
    """The image could not be built; the message carries the failing step's output."""


@dataclass(frozen=True)
class ImageResult:
    tag: str
    content_hash: str
    built: bool
    """False when an image of this content was already there (the cache hit)."""
    seconds: float
    """Wall time of the whole call (hashing, wheels, build)."""


def runtime_pins(project: str = "fsm-agent") -> list[str]:
    """``name==version`` of every runtime dependency of ``project`` installed here, transitively
    (extras and dependencies for other Pythons skipped): what the image installs, pinned."""
    pins: dict[str, str] = {}
    todo = [r for r in metadata.requires(project) or [] if "extra ==" not in r]
    while todo:
        requirement = todo.pop()
        if "extra ==" in requirement:
            continue
        match = _NAME.match(requirement)
        if match is None:
            continue
        name = match.group(0)
        key = name.lower().replace("_", "-")
        if key in pins:
            continue
        try:
            pins[key] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a marker for another Python or platform (e.g. exceptiongroup < 3.11)
        todo.extend(metadata.requires(name) or [])
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def source_files(root: Path) -> list[Path]:
    files = [root / "pyproject.toml"]
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*")):
            if "__pycache__" in path.parts or path.suffix not in SOURCE_SUFFIXES:
                continue
            if path.is_file():
                files.append(path)
    return files


def agent_files(agent_bin: Path) -> list[Path]:
    """The agent package's bin directory (the binary and what it loads beside it)."""
    return sorted(p for p in agent_bin.parent.rglob("*") if p.is_file())


def content_hash(
    root: Path, base_id: str, agent_bin: Path, pins: Iterable[str], build_args: dict[str, str]
) -> str:
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("dockerfile", (root / "docker" / "Dockerfile").read_bytes())
    add("base", base_id.encode())
    add("kilo-version", IMAGE_AGENT.version.encode())
    add("pins", "\n".join(pins).encode())
    add("args", repr(sorted(build_args.items())).encode())
    for path in source_files(root):
        add(f"src:{path.relative_to(root)}", path.read_bytes())
    for path in agent_files(agent_bin):
        file_digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                file_digest.update(block)
        mode = "x" if os.access(path, os.X_OK) else "-"
        add(f"kilo:{path.relative_to(agent_bin.parent)}:{mode}", file_digest.digest())
    return digest.hexdigest()


def _run(args: list[str], what: str, *, quiet: bool = True) -> str:
    done = subprocess.run(
        args,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stdout or "")[-3000:].strip()
        raise ImageBuildError(f"{what} failed (exit {done.returncode}): {' '.join(args)}\n{tail}")
    return done.stdout or ""


def image_id(tag: str, docker: str = "docker") -> str | None:
    done = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_base(
    base: str = BASE_IMAGE, *, root: Path = PROJECT_ROOT, docker: str = "docker"
) -> str:
    """The base image's id, building the offline base with ``docker/base.sh`` if it is missing.

    Any other base (a public Python image) must be there already: nothing is pulled here."""
    found = image_id(base, docker)
    if found is not None:
        return found
    if base != BASE_IMAGE:
        raise ImageBuildError(f"base image {base} is not present (`docker pull {base}` first)")
    _run(["bash", str(root / "docker" / "base.sh"), base], "building the base image", quiet=False)
    found = image_id(base, docker)
    if found is None:
        raise ImageBuildError(f"docker/base.sh ran but {base} is still missing")
    return found


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def wheel_cache() -> Path:
    """Where the dependency wheels are kept between builds, one folder per set of pins."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fsm-agent" / "wheels"


AGENT_MODE = 0o711
"""Execute-only: a process running a binary it cannot read is not dumpable, so Kilo's
``/proc/<pid>/environ`` (its password) and ``mem`` are root's, not its own user's."""


def _stage_agent_file(source: Path, dest: Path, binary: Path) -> None:
    """Into the build context with the modes the image needs, so ``COPY`` sets them and no
    later ``chmod`` layer duplicates the 230 MB (a hard link would share the host's inode)."""
    mode = source.stat().st_mode & 0o7777
    wanted = AGENT_MODE if source == binary else mode & ~0o022
    if wanted == mode:
        _link_or_copy(source, dest)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    dest.chmod(wanted)


def build_wheels(root: Path, pins: list[str], out: Path) -> None:
    """The project's wheel in ``out/project``, its runtime dependencies' in ``out/deps``.

    The project is built from a copy of its sources, so a stale ``build/`` left in the tree can
    never add a deleted module to the image. The dependencies are built once per set of pins
    and kept (``wheel_cache``): the same files each time, so Docker reuses their layer too.
    """
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "wheel"]
    with tempfile.TemporaryDirectory(prefix="fsm-agent-src-") as tmp:
        source = Path(tmp)
        for path in [*source_files(root), root / "README.md"]:
            if path.exists():
                _link_or_copy(path, source / path.relative_to(root))
        _run([*pip, "--no-deps", "--wheel-dir", str(out / "project"), str(source)], "pip wheel")
    key = hashlib.sha256("\n".join([sys.version, *pins]).encode()).hexdigest()[:16]
    cached = wheel_cache() / key
    if not cached.is_dir():
        dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"][
            "dependencies"
        ]
        partial = cached.with_name(key + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        constraints = partial / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n")
        _run(
            [*pip, "--wheel-dir", str(partial), "-c", str(constraints), *dependencies],
            "pip wheel (dependencies)",
        )
        constraints.unlink()
        partial.rename(cached)
    for wheel in cached.glob("*.whl"):
        _link_or_copy(wheel, out / "deps" / wheel.name)


def ensure_image(
    *,
    base: str = BASE_IMAGE,
    root: Path = PROJECT_ROOT,
    agent_bin: str | None = None,
    build_args: dict[str, str] | None = None,
    docker: str = "docker",
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> str:
    """The tag of an up-to-date wrapper image, built only if its content changed."""
    return build_image(
        base=base, root=root, agent_bin=agent_bin, build_args=build_args, docker=docker, log=log
    ).tag


def build_image(
    *,
    base: str = BASE_IMAGE,
    root: Path = PROJECT_ROOT,
    agent_bin: str | None = None,
    build_args: dict[str, str] | None = None,
    docker: str = "docker",
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> ImageResult:
    """``ensure_image`` with what it did and how long it took."""
    started = time.monotonic()
    args = dict(build_args or {})
    base_id = ensure_base(base, root=root, docker=docker)
    agent = find_agent(IMAGE_AGENT, agent_bin)
    pins = runtime_pins()
    digest = content_hash(root, base_id, agent, pins, {"BASE": base, **args})
    tag = f"{WRAPPER_REPOSITORY}:{digest[:12]}"
    if image_id(tag, docker) is not None:
        if image_id(LATEST, docker) != image_id(tag, docker):
            _run([docker, "tag", tag, LATEST], "docker tag")
        return ImageResult(tag, digest, built=False, seconds=time.monotonic() - started)
    log(f"building {tag} (content changed or first build)")
    with tempfile.TemporaryDirectory(prefix="fsm-agent-image-") as tmp:
        context = Path(tmp)
        shutil.copy2(root / "docker" / "Dockerfile", context / "Dockerfile")
        build_wheels(root, pins, context / "wheels")
        for path in agent_files(agent):
            staged = context / IMAGE_AGENT.binary / path.relative_to(agent.parent)
            _stage_agent_file(path, staged, agent)
        command = [docker, "build", "--quiet", "-t", tag, "-t", LATEST]
        for key, value in {"BASE": base, "CONTENT_HASH": digest, **args}.items():
            command += ["--build-arg", f"{key}={value}"]
        _run([*command, str(context)], "docker build")
    seconds = time.monotonic() - started
    log(f"built {tag} in {seconds:.1f} s")
    return ImageResult(tag, digest, built=True, seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    """``python -m adapters.runtime.image [--base IMAGE]``: print the tag (``just image``)."""
    args = sys.argv[1:] if argv is None else argv
    base = BASE_IMAGE
    if args[:1] == ["--base"] and len(args) == 2:
        base = args[1]
    elif args:
        print("usage: python -m adapters.runtime.image [--base IMAGE]", file=sys.stderr)
        return 2
    try:
        result = build_image(base=base)
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "built" if result.built else "up to date"
    print(f"{result.tag} ({state}, {result.seconds:.1f} s)", file=sys.stderr)
    print(result.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
