"""wshub as a user gets it: built with ``python -m build``, installed into fresh venvs, run outside.

One build per module (``python -m build`` with build isolation, on a clean
copy of the sources), then:

- the wheel, installed by a fresh venv's own pip (dependencies from the
  package index, through pip's usual cache): ``wshub --version``,
  ``python -m wshub --version``, the metadata's version and licence, the C
  accelerator loaded from site-packages, and ``wshub serve`` echoing to this
  test venv's ``websockets`` client;
- the sdist, compiled by pip (``_speedups`` built and loaded, no warning);
- the sdist with ``CC=false``: pip succeeds on the pure-Python path, and
  importing wshub says so in exactly one line, which
  ``WSHUB_NO_EXTENSIONS=1`` silences.

Every command runs with the temporary directory as its working directory and
without PYTHONPATH, so the source tree cannot be imported by mistake (the
probe checks where ``wshub`` came from).  A step that cannot run fails with
the reason (see ``support.py``); nothing here skips.  ``-s`` shows the smoke
output and the seconds each step took.
"""

from __future__ import annotations

import json
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.support import (
    PROBE,
    ROOT,
    Dist,
    Step,
    StepFailed,
    Venv,
    attempt,
    build_dists,
    clean_env,
    make_venv,
    pip_install_into,
    run,
    serve_and_echo,
)
from wshub._version import __version__ as SOURCE_VERSION

PURE_PATH_LINE = "wshub: the C accelerator wshub._speedups"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Step[Dist]:
    step = attempt(lambda: build_dists(tmp_path_factory.mktemp("build")))
    if step.value is not None:
        print(f"\npython -m build: {step.value.sdist.name}, {step.value.wheel.name}", end=" ")
        print(f"in {step.value.seconds:.1f}s")
    return step


@pytest.fixture(scope="module")
def wheel_venv(dist: Step[Dist], tmp_path_factory: pytest.TempPathFactory) -> Step[Venv]:
    """A fresh venv (with its own pip) that installed the wheel and its dependencies."""
    if dist.error is not None:
        return Step(error=dist.error)
    built = dist.get()

    def install() -> Venv:
        began = time.perf_counter()
        venv = make_venv(tmp_path_factory.mktemp("wheel") / "venv", with_pip=True)
        run(
            [venv.python, "-m", "pip", "install", built.wheel],
            cwd=venv.root.parent,
            what=f"pip install {built.wheel.name} into a fresh venv",
        )
        print(f"\nfresh venv + pip install {built.wheel.name}: {time.perf_counter() - began:.1f}s")
        return venv

    return attempt(install)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A working directory outside the repository."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    yield tmp_path


def probe(venv: Venv, cwd: Path, **env: str) -> tuple[dict[str, Any], str]:
    proc = run([venv.python, "-c", PROBE], cwd=cwd, env=clean_env(**env), what="import wshub")
    info: dict[str, Any] = json.loads(proc.stdout)
    assert Path(info["file"]).resolve().is_relative_to(venv.site_packages.resolve()), info
    assert str(ROOT) not in info["path"] and str(ROOT / "src") not in info["path"], info
    return info, proc.stderr


def pure_path_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(PURE_PATH_LINE)]


def test_wheel_metadata_and_contents(dist: Step[Dist]) -> None:
    wheel = dist.get().wheel
    assert wheel.name.startswith(f"wshub-{SOURCE_VERSION}-")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(f"wshub-{SOURCE_VERSION}.dist-info/METADATA").decode()
        entry_points = zf.read(f"wshub-{SOURCE_VERSION}.dist-info/entry_points.txt").decode()
    assert f"\nVersion: {SOURCE_VERSION}\n" in meta
    assert "\nLicense-Expression: MIT\n" in meta
    assert "\nLicense-File: LICENSE\n" in meta
    assert f"wshub-{SOURCE_VERSION}.dist-info/licenses/LICENSE" in names
    assert "wshub = wshub.cli:main" in entry_points
    assert any(n.startswith("wshub/_speedups.") and n.endswith(".so") for n in names), names
    for needed in (
        "wshub/py.typed",
        "wshub/demo/index.html",
        "wshub/static/wshub-client.js",
        "wshub/static/wshub-client.d.ts",
        "wshub/_version.py",
    ):
        assert needed in names
    assert not [n for n in names if n.endswith((".c", ".pyc"))], names


def test_sdist_contents(dist: Step[Dist]) -> None:
    sdist = dist.get().sdist
    top = f"wshub-{SOURCE_VERSION}"
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
        pkg_info = tf.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        meta = pkg_info.read().decode()
    for needed in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "pyproject.toml",
        "setup.py",
        "src/wshub/_speedups.c",
        "src/wshub/_version.py",
        "src/wshub/demo/index.html",
    ):
        assert f"{top}/{needed}" in names, needed
    assert not [n for n in names if n.endswith((".so", ".pyc"))], names
    assert f"\nVersion: {SOURCE_VERSION}\n" in meta


def test_installed_wheel_runs_outside_the_repo(wheel_venv: Step[Venv], outside: Path) -> None:
    venv = wheel_venv.get()
    expected = f"wshub {SOURCE_VERSION}"

    script = run([venv.bin / "wshub", "--version"], cwd=outside, what="wshub --version")
    module = run(
        [venv.python, "-m", "wshub", "--version"], cwd=outside, what="python -m wshub --version"
    )
    print(f"\n$ wshub --version\n{script.stdout.strip()}")
    print(f"$ python -m wshub --version\n{module.stdout.strip()}")
    assert script.stdout == module.stdout == expected + "\n"
    assert script.stderr == module.stderr == ""

    info, stderr = probe(venv, outside)
    print(f"installed: {info['file']} {info['version']} (metadata {info['metadata_version']})")
    print(f"accelerator: {info['speedups']}")
    assert info["version"] == info["metadata_version"] == SOURCE_VERSION
    assert info["license"] == "MIT" and info["license_files"], info
    assert info["accelerated"] is True
    assert info["speedups"] and Path(info["speedups"]).is_relative_to(venv.site_packages)
    assert stderr == ""

    began = time.perf_counter()
    replies, server_err = serve_and_echo(venv, outside)
    took = time.perf_counter() - began
    print(f"wshub serve + websockets echo: {took:.2f}s; stderr: {server_err.strip()}")
    assert replies == ["echo é", b"\x00\xffbinary", "x" * 70_000]
    assert "wshub serve: echo on ws://127.0.0.1:" in server_err


def test_sdist_installs_and_compiles_the_accelerator(dist: Step[Dist], outside: Path) -> None:
    sdist = dist.get().sdist
    began = time.perf_counter()
    venv = make_venv(outside / "venv", with_pip=False)
    pip_install_into(venv, sdist, cwd=outside)
    print(f"\nsdist installed (compiled) in {time.perf_counter() - began:.1f}s")

    info, stderr = probe(venv, outside)
    print(f"accelerator: {info['speedups']}")
    assert info["accelerated"] is True
    assert info["speedups"] and Path(info["speedups"]).is_relative_to(venv.site_packages)
    assert info["version"] == info["metadata_version"] == SOURCE_VERSION
    assert pure_path_lines(stderr) == [] and stderr == ""


def test_sdist_without_a_compiler_installs_the_pure_path(dist: Step[Dist], outside: Path) -> None:
    sdist = dist.get().sdist
    began = time.perf_counter()
    venv = make_venv(outside / "venv", with_pip=False)
    try:
        pip_install_into(venv, sdist, cwd=outside, CC="false")
    except StepFailed as exc:
        pytest.fail(f"with no compiler (CC=false) the install must still succeed:\n{exc}")
    print(f"\nsdist installed with CC=false in {time.perf_counter() - began:.1f}s")
    assert not list(venv.site_packages.glob("wshub/_speedups*")), "CC=false built it anyway?"

    # Importing every module says it once, on stderr, through the 'wshub' logger.
    info, stderr = probe(venv, outside)
    lines = pure_path_lines(stderr)
    print(f"import wshub, stderr:\n{stderr.strip()}")
    assert info["accelerated"] is False and info["speedups"] is None
    assert len(lines) == 1, stderr
    assert "is not built" in lines[0] and "WSHUB_NO_EXTENSIONS=1" in lines[0]
    assert stderr.strip() == lines[0]

    # Choosing the pure path is quiet.
    _info, quiet = probe(venv, outside, WSHUB_NO_EXTENSIONS="1")
    assert quiet == ""

    # And the pure path serves: the CLI says it once, then echoes.
    replies, server_err = serve_and_echo(venv, outside)
    assert replies == ["echo é", b"\x00\xffbinary", "x" * 70_000]
    assert len(pure_path_lines(server_err)) == 1, server_err
