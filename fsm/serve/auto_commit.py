"""Auto-commit: after a completed turn whose prompt asked for it, commit the workspace.

A post-turn task, not part of the turn: the outcome has already gone out when this runs, so a
slow or failing commit never changes a turn's result (the source system raced it against the
completion and could lose the outcome to a hung ``git``). The result is reported as a wrapper
event (``wrapper.auto_commit``) on the same ordered stream as Kilo's events. Each step is bounded:
``git`` calls 30 s, the commit message from Kilo 30 s, falling back to one built from the prompt.

The workspace is hostile. The agent runs arbitrary code in it, so everything git would read from
it is the agent's: hooks, ``.git/config``, ``.gitattributes``, even where ``.git`` points. Git
runs programs named in those places, and here it runs as the wrapper, which holds the wrapper's
secrets and its private state. So:

* **Git runs in an environment built from scratch** (:func:`git_environment`): ``PATH`` (without
  relative or workspace entries), ``LANG=C``, ``GIT_TERMINAL_PROMPT=0``, no system or global config
  (``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``, ``HOME`` an empty private directory),
  never the wrapper's ``os.environ`` (``FSM_AGENT_TOKEN`` and the like would reach any program git
  starts, and ``GIT_DIR``-style variables would redirect git). The repository is named with
  ``--git-dir``/``--work-tree``, so git discovers nothing on its own; stdin is ``/dev/null``.
* **Command-line config disables what runs programs** (:func:`hardening_options`): hooks point at
  an empty directory the wrapper creates outside the workspace (``core.hooksPath``; ``--no-verify``
  alone leaves post-commit, post-index-change and reference-transaction hooks running), no
  fsmonitor, no untracked cache, no pager, editor, signing, credential helper, automatic gc,
  submodule recursion or network. These ``-c`` values win over the repository's and are passed on
  to any git child process.
* **The repository's own config is checked against an allow-list** before every step that could
  run a program, and the commit is refused, naming the key, when anything else is there. The
  allow-list, not a deny-list, because the keys that run programs (``filter.*.clean``/``process``
  run by ``git add`` through ``.gitattributes``, ``diff.external``, ``*.textconv``, ``gpg.program``,
  ``core.sshCommand``, ``credential.helper``, ``merge.*.driver``, ``include.path`` and
  ``includeIf`` pulling in any other file, ``extensions.worktreeConfig`` pulling in
  ``config.worktree``...) grow with each git release; an allow-list fails closed. Each allowed key
  only tunes how git itself reads and writes data in-process (file modes, line endings, case,
  symlinks, the object format), names the author, or is read only by commands this module never
  runs (fetch, push, pull, submodule update: ``remote.*``, ``branch.*``, ``submodule.*.url``). None
  names a program, a file to include or another directory. The cost: a repository with any other
  local setting (``git lfs install --local``, ``core.hooksPath`` of a hook manager...) is not
  auto-committed; the report says which key stopped it.
* **``.git`` must be a directory inside the workspace**: a ``.git`` file (``gitdir:`` elsewhere),
  a symlink, or a ``commondir`` would make the commit land in, and the config come from, another
  repository.
* **The wrapper's private state is never committed**: ``<workspace>/.fsm-agent`` always, plus the
  ``private_paths`` the caller names (Kilo's state directory: its database holds the whole
  conversation). Each one inside the workspace gets an anchored line in ``.git/info/exclude``
  (written without following symlinks, the user's lines kept), is excluded by pathspec from
  ``git add`` (a ``.gitignore`` negation outranks ``info/exclude``), and is removed from the index
  (``git rm --cached``) so a copy the agent pre-staged, or an earlier commit carried, is not in
  the commit.

The agent can still copy private files under another name before the turn ends; only a state
directory outside the workspace, out of the agent's reach, prevents that.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from adapters.kilo.process import RunAs

GIT_TIMEOUT = 30.0
MESSAGE_TIMEOUT = 30.0
MAX_MESSAGE_BYTES = 4096
PRIVATE_DIR = ".fsm-agent"
"""The wrapper's namespace in a workspace: never committed, whatever the caller passes."""

_MAX_EXCLUDE_BYTES = 1024 * 1024
_EXCLUDE_COMMENT = "# fsm-agent: the wrapper's private state, never committed"

_ALLOWED_KEYS = frozenset(
    {
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "core.logallrefupdates",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.symlinks",
        "core.autocrlf",
        "core.eol",
        "core.safecrlf",
        "core.quotepath",
        "core.checkstat",
        "core.trustctime",
        "init.defaultbranch",
        "extensions.objectformat",
        "pull.rebase",
        "pull.ff",
        "push.default",
    }
)
"""Two-level keys (git prints section and name lowercased) that run nothing and redirect nothing."""

_ALLOWED_SECTIONS = frozenset({"user"})
"""Sections whose every two-level key is harmless: ``user.name``, ``user.email``..."""

_ALLOWED_IN_SUBSECTIONS: dict[str, frozenset[str]] = {
    "remote": frozenset({"url", "pushurl", "fetch"}),
    "branch": frozenset({"remote", "merge", "rebase"}),
    "submodule": frozenset({"url", "active"}),
}
"""Three-level keys ``section.<anything>.name``: read only by fetch, push, pull and submodule
update, which this module never runs (an ``ext::`` URL is inert here)."""


class GitError(Exception):
    pass


class RefusedError(GitError):
    """The workspace is set up so that committing it could run the agent's code as the wrapper."""


def git_environment(home: Path, *, workdir: Path | None = None) -> dict[str, str]:
    """The whole environment of every git call, built from nothing but fixed values.

    ``PATH`` is the wrapper's, minus relative entries and entries inside ``workdir``: git starts
    helpers through it (``sh``, ``false`` as the editor) and the agent writes the workspace.
    """
    entries = []
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not entry or not os.path.isabs(entry):
            continue
        if workdir is not None and _is_within(Path(entry), workdir):
            continue
        entries.append(entry)
    return {
        "PATH": os.pathsep.join(entries),
        "LANG": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ATTR_NOSYSTEM": "1",
        "HOME": str(home),
    }


def hardening_options(hooks_dir: Path) -> list[str]:
    """``-c`` options given to every git call; command-line config outranks the repository's."""
    settings = [
        f"core.hooksPath={hooks_dir}",
        "core.fsmonitor=false",
        "core.untrackedCache=false",
        "core.pager=cat",
        "core.editor=false",
        "sequence.editor=false",
        "core.askPass=",
        "credential.helper=",
        "commit.gpgSign=false",
        "tag.gpgSign=false",
        "gc.auto=0",
        "maintenance.auto=false",
        "diff.ignoreSubmodules=all",
        "status.submoduleSummary=false",
        "submodule.recurse=false",
        "protocol.allow=never",
    ]
    options = ["--no-replace-objects"]
    for setting in settings:
        options += ["-c", setting]
    return options


def unsafe_config_keys(listing: bytes) -> list[str]:
    """The keys of ``git config --list --null`` output that are outside the allow-list."""
    unsafe = []
    for item in listing.split(b"\0"):
        if not item:
            continue
        key = item.split(b"\n", 1)[0].decode("utf-8", "replace")
        if not _allowed(key):
            unsafe.append(key)
    return unsafe


def _allowed(key: str) -> bool:
    section, _, rest = key.partition(".")
    subsection, _, name = rest.rpartition(".")
    if not subsection:
        return key in _ALLOWED_KEYS or section in _ALLOWED_SECTIONS
    return name in _ALLOWED_IN_SUBSECTIONS.get(section, frozenset())


def fallback_message(prompt: str) -> str:
    first = prompt.strip().splitlines()[0] if prompt.strip() else "changes"
    return f"fsm-agent: {first[:72]}"


def _capped(message: str) -> str:
    """At most MAX_MESSAGE_BYTES of UTF-8, no NUL (an argument cannot hold one)."""
    raw = message.replace("\0", "").encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
    return raw.decode("utf-8", "ignore").strip()


def _is_within(path: Path, root: Path) -> bool:
    for candidate in {Path(os.path.abspath(path)), path.resolve()}:
        for base in {Path(os.path.abspath(root)), root.resolve()}:
            if candidate == base or base in candidate.parents:
                return True
    return False


def _private_relpaths(workdir: Path, private_paths: Sequence[Path]) -> list[str]:
    """The private paths inside the workspace, relative to it, as POSIX strings.

    Both the lexical and the symlink-resolved forms count, so a symlinked workspace or state
    directory is still recognised. Paths outside the workspace need nothing: git never sees them.
    """
    relpaths: list[str] = []
    bases = {Path(os.path.abspath(workdir)), workdir.resolve()}
    for given in [workdir / PRIVATE_DIR, *private_paths]:
        path = given if given.is_absolute() else workdir / given
        for form in {Path(os.path.abspath(path)), path.resolve()}:
            for base in bases:
                if form == base or form in base.parents:
                    raise RefusedError(
                        f"refusing to auto-commit: the wrapper's private state {given} "
                        f"contains the whole workspace {workdir}"
                    )
                if base not in form.parents:
                    continue
                rel = form.relative_to(base).as_posix()
                if rel != ".git" and not rel.startswith(".git/") and rel not in relpaths:
                    relpaths.append(rel)
    return [rel for rel in relpaths if not any(rel.startswith(f"{up}/") for up in relpaths)]


def _exclude_pattern(rel: str) -> str | None:
    """An anchored ``info/exclude`` line matching exactly ``rel`` (a file or a directory)."""
    if any(ord(char) < 32 for char in rel):
        return None  # no gitignore line can say it; the pathspec exclude still holds
    escaped = "".join("\\" + char if char in "\\*?[]!# " else char for char in rel)
    return "/" + escaped


def _exclude_pathspecs(rel: str) -> list[str]:
    """Pathspecs leaving ``rel`` and everything under it out of ``git add`` and ``git status``.

    Glob magic with every character escaped and the last one as a bracket class: the same paths
    as the literal ``rel``, but a pathspec whose literal prefix names an ignored path makes
    ``git add`` fail with "paths are ignored" even when it is an exclude (measured with git 2.39:
    ``dir.c`` ``exclude_matches_pathspec`` does not skip exclude items), and ``rel`` is ignored
    through ``info/exclude``. The bracket ends the literal prefix one character early.
    """
    escaped = "".join("\\" + c if c in "\\*?[]" else c for c in rel[:-1]) + f"[\\{rel[-1]}]"
    return [f":(top,exclude,glob){escaped}", f":(top,exclude,glob){escaped}/**"]


def _ensure_excluded(git_dir: Path, patterns: Sequence[str]) -> None:
    """Add the missing ``patterns`` to ``.git/info/exclude``, keeping every line already there.

    Opened relative to directory descriptors and without following symlinks: the agent could
    make ``info`` or ``exclude`` a link to any file the wrapper can write.
    """
    directory = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    git_fd = os.open(git_dir, directory)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir("info", 0o755, dir_fd=git_fd)
        info_fd = os.open("info", directory, dir_fd=git_fd)
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open("exclude", flags, 0o644, dir_fd=info_fd)
            try:
                _append_missing(fd, patterns)
            finally:
                os.close(fd)
        finally:
            os.close(info_fd)
    finally:
        os.close(git_fd)


def _append_missing(fd: int, patterns: Sequence[str]) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise RefusedError("refusing to auto-commit: .git/info/exclude is not a plain file")
    if info.st_size > _MAX_EXCLUDE_BYTES:
        raise RefusedError("refusing to auto-commit: .git/info/exclude is larger than 1 MiB")
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    present = {line.rstrip("\r") for line in data.decode("utf-8", "surrogateescape").split("\n")}
    missing = [pattern for pattern in patterns if pattern not in present]
    if not missing:
        return
    lines = ([] if _EXCLUDE_COMMENT in present else [_EXCLUDE_COMMENT]) + missing
    text = ("" if not data or data.endswith(b"\n") else "\n") + "".join(f"{x}\n" for x in lines)
    os.lseek(fd, 0, os.SEEK_END)
    payload = text.encode("utf-8", "surrogateescape")
    while payload:
        payload = payload[os.write(fd, payload) :]


def _has_git_dir(workdir: Path) -> bool:
    """Whether ``workdir/.git`` is a real directory; refused if it is anything else."""
    dot_git = workdir / ".git"
    try:
        info = dot_git.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise RefusedError(
            f"refusing to auto-commit: {dot_git} is a symlink (to {os.readlink(dot_git)}), "
            "not a .git directory inside the workspace"
        )
    if stat.S_ISREG(info.st_mode):
        raise RefusedError(
            f"refusing to auto-commit: {dot_git} is a file (a gitdir: pointer to a repository "
            "elsewhere), not a .git directory inside the workspace"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise RefusedError(f"refusing to auto-commit: {dot_git} is not a directory")
    if os.path.lexists(dot_git / "commondir"):
        raise RefusedError(
            f"refusing to auto-commit: {dot_git}/commondir points the repository at another "
            "directory, not a .git directory inside the workspace"
        )
    return True


def _command_name(args: Sequence[str]) -> str:
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "-c":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return "git"


class _Git:
    """Git confined to one workspace: fixed executable, environment, options and repository."""

    def __init__(self, workdir: Path, private_root: Path, run_as: RunAs | None = None) -> None:
        self.workdir = workdir
        self.git_dir = workdir / ".git"
        self.env = git_environment(private_root / "home", workdir=workdir)
        executable = shutil.which("git", path=self.env["PATH"])
        if executable is None:
            raise GitError("git is not on PATH")
        self.prefix = [
            executable,
            f"--git-dir={self.git_dir}",
            f"--work-tree={workdir}",
            *hardening_options(private_root / "hooks"),
        ]
        if run_as is not None:
            # The repository is the agent's (its uid owns the workspace): git runs as the agent,
            # so it can write there, git's ownership check passes, and nothing it runs (if the
            # hardening missed something) holds more than the agent already has.
            self.prefix = run_as.command(self.prefix, workdir)

    async def run(self, *args: str) -> bytes:
        with anyio.fail_after(GIT_TIMEOUT):
            done = await anyio.run_process(
                [*self.prefix, *args],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                check=False,
                start_new_session=True,
            )
        if done.returncode != 0:
            stderr = done.stderr.decode("utf-8", "replace")[-300:]
            raise GitError(f"git {_command_name(args)} failed ({done.returncode}): {stderr}")
        return done.stdout

    async def guard(self) -> None:
        """Refuse unless ``.git`` is a directory here and its config holds only allowed keys.

        Run before every step that could start a program: the agent's processes may outlive
        its turn and rewrite the config between two steps.
        """
        if not _has_git_dir(self.workdir):
            raise RefusedError(f"refusing to auto-commit: {self.git_dir} is gone")
        listing = await self.run("config", "--local", "--no-includes", "--list", "--null")
        unsafe = unsafe_config_keys(listing)
        if unsafe:
            shown = ", ".join(key[:200] for key in unsafe[:5])
            more = f" and {len(unsafe) - 5} more" if len(unsafe) > 5 else ""
            raise RefusedError(
                f"refusing to auto-commit: the repository's config sets {shown}{more}, outside "
                "the keys known not to run programs or read other files"
            )


def _private_root(workdir: Path, shared: bool = False) -> Path:
    """A fresh directory outside the workspace holding an empty HOME and an empty hooks dir.
    ``shared``: git runs as another user (the agent), who must be able to look into them; they
    stay empty and are nobody's to write but ours."""
    root = Path(tempfile.mkdtemp(prefix="fsm-agent-git-"))
    if _is_within(root, workdir):
        shutil.rmtree(root, ignore_errors=True)
        raise GitError(f"the temporary directory {root} lies inside the workspace")
    for name in ("home", "hooks"):
        (root / name).mkdir(mode=0o555 if shared else 0o500)
    if shared:
        root.chmod(0o711)
    return root


def _remove_private_root(root: Path) -> None:
    for name in ("home", "hooks"):
        with contextlib.suppress(OSError):
            (root / name).chmod(0o700)
    shutil.rmtree(root, ignore_errors=True)


async def auto_commit(
    workdir: Path,
    prompt: str,
    generate: Callable[[], Awaitable[str]],
    *,
    private_paths: Sequence[Path] = (),
    run_as: RunAs | None = None,
) -> dict[str, Any]:
    """Commit everything the turn changed; the report, never an exception.

    ``private_paths`` are the wrapper's own state (Kilo's state directory); with
    ``<workdir>/.fsm-agent`` they are never committed. Relative ones are taken from ``workdir``.
    ``run_as``: the user the workspace belongs to (``[kilo] user``, the container's agent): git
    runs as that user. The wrapper cannot write that user's ``.git`` then, so the private paths
    are kept out by pathspec and index removal alone, not also by ``info/exclude``.
    """
    root: Path | None = None
    try:
        workdir = Path(os.path.abspath(workdir))
        private = _private_relpaths(workdir, private_paths)
        patterns = [p for p in map(_exclude_pattern, private) if p is not None]
        excludes = [spec for rel in private for spec in _exclude_pathspecs(rel)]
        root = _private_root(workdir, shared=run_as is not None)
        git = _Git(workdir, root, run_as)
        if not _has_git_dir(workdir):
            # No repository, so nothing of the agent's to load: git says what is wrong.
            await git.run("status", "--porcelain")
            raise GitError(f"git status failed: {workdir} has no .git directory")
        await git.guard()
        status = await git.run(
            "status", "--porcelain", "--ignore-submodules=all", "--", ".", *excludes
        )
        if not status.strip():
            return {"success": True, "skipped": True, "reason": "nothing to commit"}
        message = ""
        try:
            with anyio.fail_after(MESSAGE_TIMEOUT):
                message = _capped(await generate())
        except Exception:
            message = ""
        message = message or _capped(fallback_message(prompt))
        await git.guard()
        if run_as is None:
            _ensure_excluded(git.git_dir, patterns)
        await git.run("add", "-A", "--", ".", *excludes)
        if private:
            await git.run(
                "rm", "-r", "-q", "-f", "--cached", "--ignore-unmatch", "--",
                *[f":(top,literal){rel}" for rel in private],
            )  # fmt: skip
        await git.guard()
        await git.run(
            "-c",
            "user.name=fsm-agent",
            "-c",
            "user.email=fsm-agent@localhost",
            "commit",
            "-q",
            "--no-verify",
            "--no-gpg-sign",
            "-m",
            message,
        )
        sha = (await git.run("rev-parse", "--verify", "HEAD")).decode().strip()
        return {"success": True, "skipped": False, "commit": sha, "commit_message": message}
    except TimeoutError:
        return {"success": False, "error": f"git did not answer within {GIT_TIMEOUT:g} s"}
    except (GitError, OSError) as exc:
        return {"success": False, "error": str(exc)}
    except Exception as exc:  # the contract: a report, never an exception
        return {"success": False, "error": f"auto-commit failed: {exc!r}"}
    finally:
        if root is not None:
            _remove_private_root(root)
