"""Build wshub's sdist and wheel, make fresh virtual environments, run what they installed.

Every step runs a real command and raises :class:`StepFailed` with the
command's own words when it cannot: a missing ``build`` package, no package
index to install the dependencies from, a compiler error.  The tests turn that
into a failure (:meth:`Step.get`), never a skip: a package nobody could
install is not proven.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Generic, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTER_PYTHON = Path(sys.executable)

# What the sdist is made of: the build is run on a copy of these, so it never
# writes into the shared work tree and never sees an in-place build of the
# accelerator.
SOURCE_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CHANGELOG.md")

# Words in pip's or build's output that mean "the package index was not there".
_OFFLINE_SIGNS = (
    "No matching distribution found",
    "Could not find a version that satisfies",
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeout",
)

T = TypeVar("T")


class StepFailed(Exception):
    """A build or install step could not run; the message says which and why."""


@dataclass
class Step(Generic[T]):
    """The outcome of a step a module-scoped fixture ran once for several tests."""

    value: T | None = None
    error: str | None = None

    def get(self) -> T:
        if self.error is not None:
            pytest.fail(self.error, pytrace=False)
        assert self.value is not None
        return self.value


def attempt(fn: Callable[[], T]) -> Step[T]:
    try:
        return Step(value=fn())
    except StepFailed as exc:
        return Step(error=str(exc))


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points Python at the source tree."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "WSHUB_NO_EXTENSIONS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path,
    what: str,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; unless it exits 0, raise :class:`StepFailed` saying what failed and why."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=clean_env() if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StepFailed(f"{what}: still running after {timeout:.0f}s: {' '.join(args)}") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-4000:]
        why = ""
        if any(sign in output for sign in _OFFLINE_SIGNS):
            why = (
                "\nThe package index could not be reached (or lacks a dependency): this test "
                "installs wshub as a user does and cannot prove anything without it."
            )
        raise StepFailed(
            f"{what} failed (exit {proc.returncode}): {' '.join(args)}{why}\n--- output ---\n"
            f"{output}"
        )
    return proc


@dataclass
class Dist:
    sdist: Path
    wheel: Path
    seconds: float


def build_dists(workdir: Path) -> Dist:
    """``python -m build`` (isolated, as for a release) on a clean copy of the sources."""
    if find_spec("build") is None:
        raise StepFailed(
            f"the 'build' package is not installed in {OUTER_PYTHON.parent.parent} "
            "(it is in the dev extra): run 'make venv'"
        )
    began = time.perf_counter()
    src = workdir / "source"
    src.mkdir()
    for name in SOURCE_FILES:
        if not (ROOT / name).is_file():
            raise StepFailed(f"{name} is missing from {ROOT}: the sdist needs it")
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "src",
        src / "src",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.egg-info"),
    )
    out = workdir / "dist"
    run(
        [OUTER_PYTHON, "-m", "build", "--sdist", "--wheel", "--outdir", out, src],
        cwd=workdir,
        what="python -m build",
    )
    sdists = sorted(out.glob("wshub-*.tar.gz"))
    wheels = sorted(out.glob("wshub-*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise StepFailed(f"python -m build left {sorted(p.name for p in out.iterdir())}")
    return Dist(sdists[0], wheels[0], time.perf_counter() - began)


@dataclass
class Venv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def site_packages(self) -> Path:
        found = sorted(self.root.glob("lib/python3*/site-packages"))
        assert len(found) == 1, found
        return found[0]


def make_venv(path: Path, *, with_pip: bool) -> Venv:
    """A fresh venv; ``with_pip=False`` skips ensurepip (most of a venv's cost)."""
    argv: list[str | os.PathLike[str]] = [OUTER_PYTHON, "-m", "venv", path]
    if not with_pip:
        argv.append("--without-pip")
    run(argv, cwd=path.parent, what="python -m venv")
    return Venv(path)


def pip_install_into(
    venv: Venv, *requirements: str | os.PathLike[str], cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Install with this test venv's pip into ``venv`` (``pip --python``), building with isolation.

    ``--no-cache-dir``: pip would otherwise keep the wheel it builds from
    ``wshub-X.tar.gz`` and hand the compiled one to the next install of the
    same file, the one without a compiler included.
    """
    return run(
        [
            OUTER_PYTHON,
            "-m",
            "pip",
            "--python",
            venv.python,
            "install",
            "--no-cache-dir",
            *requirements,
        ],
        cwd=cwd,
        env=clean_env(**env),
        what=f"pip install {' '.join(str(r) for r in requirements)} {env or ''}".rstrip(),
    )


# Run by the installed interpreter, from outside the repository: what got imported, from where.
PROBE = """
import json, sys
from importlib import metadata
from importlib.util import find_spec
import wshub, wshub.cli, wshub.asgi, wshub.transport.http1
from wshub.protocol import frames
dist = metadata.distribution("wshub")
spec = find_spec("wshub._speedups")
print(json.dumps({
    "file": wshub.__file__,
    "version": wshub.__version__,
    "metadata_version": dist.version,
    "license": dist.metadata.get("License-Expression"),
    "license_files": [str(f) for f in dist.files or () if "licenses" in str(f)],
    "accelerated": frames.ACCELERATED,
    "speedups": spec.origin if spec else None,
    "path": sys.path,
}))
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_and_echo(venv: Venv, cwd: Path) -> tuple[list[str | bytes], str]:
    """``wshub serve`` from ``venv`` on a free loopback port, used by this venv's ``websockets``.

    Returns what came back and the server's stderr; asserts it exits 0 on SIGTERM.
    """
    from websockets.sync.client import connect

    port = free_port()
    proc = subprocess.Popen(
        [str(venv.bin / "wshub"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=clean_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                _out, err = proc.communicate()
                raise AssertionError(f"wshub serve exited {proc.returncode}: {err}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"wshub serve did not listen on {port}") from None
                time.sleep(0.02)
        replies: list[str | bytes] = []
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=10, close_timeout=5) as ws:
            for message in ("echo é", b"\x00\xffbinary", "x" * 70_000):
                ws.send(message)
                replies.append(ws.recv(timeout=10))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
            raise AssertionError("wshub serve did not exit 15s after SIGTERM") from None
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return replies, err
