#!/usr/bin/env python3
"""Install Autobahn|Testsuite's ``wstest`` (Python 2.7 code) inside the repository.

    python3 tools/autobahn/wstest_env.py            # install if needed; prints the wstest path
    python3 tools/autobahn/wstest_env.py --force    # rebuild from scratch
    python3 tools/autobahn/wstest_env.py --python2 /path/to/python2.7

What it builds, under ``.cache/autobahn/`` at the top of the repository
(git-ignored; ``WSHUB_AUTOBAHN_PREFIX`` puts it elsewhere):

* ``bootstrap/``: a Python 3 venv with ``requirements-bootstrap.txt``
  (virtualenv 20.21.1, the last virtualenv that can create Python 2.7
  environments, and its dependencies);
* ``py2/``: a Python 2.7 virtualenv with ``requirements-py2.txt``
  (autobahntestsuite 25.10.1 and every package it needs, each pinned; pip
  installs exactly that list and ``pip check`` proves it complete).

Idempotent: when ``py2/`` was built from the same pins and the same
interpreter and its wstest starts, nothing is done.  Concurrent runs wait for
each other (a lock file in the prefix).

The Python 2.7 interpreter, first found wins (``--python2`` or
``WSHUB_PYTHON2`` skips the search):

1. ``python2.7`` / ``python2`` on PATH (pyenv's shims included);
2. pyenv's builds, ``${PYENV_ROOT:-~/.pyenv}/versions/2.7*`` (newest first);
3. ``/usr/bin/python2.7``, ``/usr/local/bin/python2.7``;
4. fallback on Debian, as root: ``python2.7`` + ``python2.7-dev`` from Debian 11
   "bullseye" (Debian 12 has no Python 2).  A bullseye apt source is added in
   ``/etc/apt/sources.list.d/`` for that install only and removed right after
   it, so the machine's own apt setup is left as it was; the packages stay.

An interpreter counts only if it is 2.7 with zlib, ssl, ctypes, hashlib and
``Python.h`` (wsaccel, a C extension, is compiled at install; so is gcc needed,
installed with apt-get as root when missing).  Only PyPI and Debian's archive
are used; Python 2.7's pip and setuptools come from virtualenv's own bundled
wheels (no get-pip).  Everything else prints why it cannot go on.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
REQUIREMENTS_PY2 = HERE / "requirements-py2.txt"
REQUIREMENTS_BOOTSTRAP = HERE / "requirements-bootstrap.txt"
APT_SOURCE = Path("/etc/apt/sources.list.d/wshub-autobahn-bullseye.list")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bumped when the way the environment is built changes (not only the pins).
LAYOUT = "1"

# Run by each candidate interpreter: prints its real executable when it can build wstest.
PY2_PROBE = """\
import os, sys, zlib, ssl, ctypes, hashlib
from distutils import sysconfig
assert sys.version_info[:2] == (2, 7), sys.version
assert os.path.exists(os.path.join(sysconfig.get_python_inc(), "Python.h")), "no Python.h"
sys.stdout.write(os.path.realpath(sys.executable))
"""
# pip lines that say nothing about this install.
PIP_NOISE = (
    "DEPRECATION: Python 2.7 reached the end of its life",
    "is ignored: it is neither a file nor a directory",
    "pip 21.0 will drop support for Python 2.7",
)


class SetupError(Exception):
    """wstest cannot be installed; the message says why and what would help."""


@dataclass(frozen=True)
class Wstest:
    """An installed wstest."""

    prefix: Path
    python: Path  # the Python 2.7 virtualenv's interpreter
    wstest: Path
    version: str  # e.g. "Autobahn 0.10.9 AutobahnTestSuite 25.10.1"


def log(msg: str) -> None:
    print(f"[wstest setup] {msg}", file=sys.stderr, flush=True)


def default_prefix() -> Path:
    explicit = os.environ.get("WSHUB_AUTOBAHN_PREFIX")
    if explicit:
        return Path(explicit).resolve()
    if os.access(ROOT, os.W_OK):
        return ROOT / ".cache" / "autobahn"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "wshub-autobahn"


def run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; on failure raise SetupError with ``what`` and the output's tail."""
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False
    )
    lines = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if not any(noise in line for noise in PIP_NOISE)
    ]
    if proc.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise SetupError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


# --- the Python 2.7 interpreter ------------------------------------------------


def probe_python2(candidate: str | Path) -> Path | None:
    """The real path of ``candidate`` if it is a Python 2.7 that can build wstest."""
    try:
        proc = subprocess.run(
            [str(candidate), "-c", PY2_PROBE],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return Path(proc.stdout.strip())


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def python2_candidates() -> list[str]:
    found: list[str] = []
    for name in ("python2.7", "python2"):
        exe = shutil.which(name)
        if exe:
            found.append(exe)
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    versions = sorted((pyenv_root / "versions").glob("2.7*"), key=_version_key, reverse=True)
    found += [str(v / "bin" / "python2.7") for v in versions]
    found += ["/usr/bin/python2.7", "/usr/local/bin/python2.7"]
    return list(dict.fromkeys(found))


def find_python2(choice: str | None) -> Path:
    """The interpreter to build on: ``choice``, else the first that works, else Debian's."""
    if choice:
        found = probe_python2(choice)
        if found is None:
            raise SetupError(
                f"{choice} is not a usable Python 2.7 (it needs zlib, ssl, ctypes, hashlib"
                " and its C headers, Python.h)"
            )
        return found
    for candidate in python2_candidates():
        found = probe_python2(candidate)
        if found is not None:
            return found
    log("no usable Python 2.7 here (PATH, pyenv, /usr/bin): trying Debian's")
    return install_debian_python2()


def is_root() -> bool:
    return os.geteuid() == 0


def debian_release() -> str:
    """``VERSION_CODENAME`` from /etc/os-release when this is Debian, else ''."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    fields = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    if fields.get("ID", "").strip('"') != "debian":
        return ""
    return fields.get("VERSION_CODENAME", "").strip('"')


def debian_mirror() -> str:
    """The Debian archive URI this machine's apt already uses (deb.debian.org if none)."""
    texts: list[str] = []
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if path.suffix in (".list", ".sources") or path.name == "sources.list":
            with contextlib.suppress(OSError):
                texts.append(path.read_text())
    for text in texts:
        for match in re.finditer(r"(?m)^\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)", text):
            uri = match.group(1).rstrip("/")
            if uri.startswith(("http://", "https://")) and uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def apt_get(*args: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", *args], f"apt-get {args[0]}", env=env)


def apt_missing(packages: list[str]) -> list[str]:
    missing = []
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def apt_install(packages: list[str], why: str) -> None:
    """Install Debian packages of the machine's own release (root only)."""
    if not (is_root() and shutil.which("apt-get") and debian_release()):
        raise SetupError(f"{why}; install {' '.join(packages)} (apt-get, as root) and run again")
    missing = apt_missing(packages)
    if not missing:
        return
    log(f"{why}: apt-get install {' '.join(missing)}")
    apt_get("update", "-qq")
    apt_get("install", "-y", "-qq", "--no-install-recommends", *missing)


def install_debian_python2() -> Path:
    """Python 2.7 from Debian 11 through a temporary apt source (root only)."""
    release = debian_release()
    if not release or not shutil.which("apt-get"):
        raise SetupError(
            "no Python 2.7 interpreter found (looked on PATH, in pyenv's versions and"
            " /usr/bin); on this system install one (e.g. `pyenv install 2.7.18`) and run"
            " again, or pass --python2 PATH"
        )
    if not is_root():
        raise SetupError(
            "no Python 2.7 interpreter found; as root this setup installs Debian 11's"
            " python2.7 (run it again as root), or pass --python2 PATH"
        )
    if release != "bullseye":
        if APT_SOURCE.exists():
            raise SetupError(f"{APT_SOURCE} exists already (an earlier run was interrupted?)")
        mirror = debian_mirror()
        signed_by = f" [signed-by={DEBIAN_KEYRING}]" if DEBIAN_KEYRING.exists() else ""
        log(f"adding the apt source {APT_SOURCE} (Debian 11 bullseye main, {mirror})")
        APT_SOURCE.write_text(
            "# Added by wshub's tools/autobahn/wstest_env.py for python2.7; removed after use.\n"
            f"deb{signed_by} {mirror} bullseye main\n"
        )
    try:
        log("apt-get install python2.7 python2.7-dev (Debian 11)")
        apt_get("update", "-qq")
        apt_get("install", "-y", "-qq", "--no-install-recommends", "python2.7", "python2.7-dev")
    finally:
        if release != "bullseye":
            APT_SOURCE.unlink(missing_ok=True)
            log(f"removed {APT_SOURCE}")
    found = probe_python2("/usr/bin/python2.7")
    if found is None:
        raise SetupError("Debian's python2.7 was installed but does not work (see above)")
    return found


# --- the environments ------------------------------------------------------------


def ensure_build_tools() -> None:
    if not (shutil.which("gcc") or shutil.which("cc")):
        apt_install(["gcc", "libc6-dev"], "no C compiler (wsaccel is compiled)")
    probe = subprocess.run(
        [sys.executable, "-c", "import venv, ensurepip"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        apt_install(["python3-venv"], f"{sys.executable} cannot create venvs")


def ensure_bootstrap(prefix: Path) -> Path:
    """A Python 3 venv with the pinned virtualenv; returns its interpreter."""
    boot = prefix / "bootstrap"
    python = boot / "bin" / "python"
    stamp = boot / ".wshub-stamp"
    want = digest(REQUIREMENTS_BOOTSTRAP.read_bytes())
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    log(f"creating {boot} (Python 3 venv with requirements-bootstrap.txt)")
    shutil.rmtree(boot, ignore_errors=True)
    run([sys.executable, "-m", "venv", str(boot)], "creating the bootstrap venv")
    run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(REQUIREMENTS_BOOTSTRAP)],
        "installing requirements-bootstrap.txt",
    )
    run([str(python), "-m", "pip", "check"], "pip check (bootstrap venv)")
    stamp.write_text(want + "\n")
    return python


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def pins_digest() -> str:
    """What the Python 2.7 environment is built from (it is rebuilt when this changes)."""
    return digest(
        LAYOUT.encode(), REQUIREMENTS_PY2.read_bytes(), REQUIREMENTS_BOOTSTRAP.read_bytes()
    )


def wstest_version(wstest: Path) -> str | None:
    try:
        proc = subprocess.run(
            [str(wstest), "--autobahnversion"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = " ".join((proc.stdout + proc.stderr).split())
    return text if proc.returncode == 0 and "AutobahnTestSuite" in text else None


@contextlib.contextmanager
def locked(prefix: Path) -> Iterator[None]:
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def installed(prefix: Path, python2: str | None = None) -> Wstest | None:
    """The wstest under ``prefix`` if it is complete and built from the current pins."""
    py2 = prefix / "py2"
    stamp_path = py2 / ".wshub-stamp.json"
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("pins") != pins_digest():
        return None
    if python2 and probe_python2(python2) != Path(stamp.get("python2", "")):
        return None
    wstest = py2 / "bin" / "wstest"
    version = wstest_version(wstest)
    if version is None:
        return None
    return Wstest(prefix=prefix, python=py2 / "bin" / "python", wstest=wstest, version=version)


def ensure(prefix: Path | None = None, python2: str | None = None, force: bool = False) -> Wstest:
    """Install wstest unless it is there already; raise SetupError saying why it cannot."""
    prefix = prefix or default_prefix()
    python2 = python2 or os.environ.get("WSHUB_PYTHON2") or None
    with locked(prefix):
        if not force:
            done = installed(prefix, python2)
            if done is not None:
                log(f"up to date: {done.version} in {prefix / 'py2'}")
                return done
        ensure_build_tools()
        py2_exe = find_python2(python2)
        log(f"Python 2.7: {py2_exe}")
        boot_python = ensure_bootstrap(prefix)

        py2 = prefix / "py2"
        log(f"creating the Python 2.7 virtualenv {py2}")
        shutil.rmtree(py2, ignore_errors=True)
        run(
            [
                str(boot_python),
                "-m",
                "virtualenv",
                "--quiet",
                "--no-periodic-update",
                "--app-data",
                str(prefix / "app-data"),
                "--python",
                str(py2_exe),
                str(py2),
            ],
            "creating the Python 2.7 virtualenv",
        )
        py2_python = py2 / "bin" / "python"
        env = dict(os.environ, PIP_NO_PYTHON_VERSION_WARNING="1")
        log("pip install -r requirements-py2.txt (Python 2.7; this takes a minute)")
        run(
            [
                str(py2_python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--no-warn-script-location",
                "-r",
                str(REQUIREMENTS_PY2),
            ],
            "installing requirements-py2.txt",
            env=env,
        )
        run([str(py2_python), "-m", "pip", "check"], "pip check (Python 2.7 env)", env=env)
        wstest = py2 / "bin" / "wstest"
        version = wstest_version(wstest)
        if version is None:
            raise SetupError(f"wstest was installed but does not start: {wstest} --autobahnversion")
        (py2 / ".wshub-stamp.json").write_text(
            json.dumps({"pins": pins_digest(), "python2": str(py2_exe), "version": version}) + "\n"
        )
        log(f"installed: {version}")
        return Wstest(prefix=prefix, python=py2_python, wstest=wstest, version=version)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--python2", help="the Python 2.7 interpreter to use (default: search)")
    p.add_argument("--prefix", type=Path, help="where to install (default: .cache/autobahn)")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = p.parse_args(argv)
    try:
        found = ensure(args.prefix, args.python2, args.force)
    except SetupError as exc:
        print(f"[wstest setup] ERROR: {exc}", file=sys.stderr)
        return 1
    print(found.wstest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
