"""The version is written once, in src/wshub/_version.py, and everything reads it.

These run on the source tree and build nothing; test_wheel.py checks that the
installed wheel's metadata carries the same version.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import wshub
from tests.packaging.support import ROOT
from wshub import _version, cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pytest brings tomli on 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]


def test_one_source_of_the_version() -> None:
    assert wshub.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?(?:\.dev\d+)?", wshub.__version__)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "pyproject.toml must not repeat the version"
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "wshub._version.__version__"}


def test_version_is_written_nowhere_else() -> None:
    literal = f'"{wshub.__version__}"'
    holders = [
        str(path.relative_to(ROOT))
        for path in [ROOT / "pyproject.toml", ROOT / "setup.py", *(ROOT / "src").rglob("*.py")]
        if literal in path.read_text(encoding="utf-8")
    ]
    assert holders == ["src/wshub/_version.py"]


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"wshub {wshub.__version__}\n"


def test_python_m_wshub_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "wshub", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wshub {wshub.__version__}\n"
