"""The conformance gate: the whole Autobahn|Testsuite, strict.

Installs wstest (the repository's own ``tools/autobahn/wstest_env.py``: a
Python 2.7 virtualenv under ``.cache/autobahn``, every package pinned), then
runs ``tools/conformance.py`` (all 517 cases against ``wshub serve --mode
echo --deflate on``; both code paths when the C accelerator is built) and
fails on any case that is not OK or INFORMATIONAL.  ``make test`` runs this
in parallel with the rest of the suite (it takes minutes, not seconds).

``WSHUB_AUTOBAHN_CASES='1.*,2.*'`` runs a selection instead of every case.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.conformance

# wstest stops itself after this long per code path; the test allows a margin.
WSTEST_TIMEOUT_S = 40 * 60


def run_stopping_on_timeout(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """subprocess.run, but a timeout sends SIGTERM first so the child stops its own children."""
    with subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"{' '.join(cmd)} did not finish within {timeout:.0f} s:\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.timeout(50 * 60)
def test_autobahn_strict_all_cases() -> None:
    setup = [sys.executable, str(ROOT / "tools" / "autobahn" / "wstest_env.py")]
    installed = run_stopping_on_timeout(setup, 20 * 60)
    if installed.returncode != 0:
        pytest.fail(
            "cannot install Autobahn|Testsuite (wstest) with tools/autobahn/wstest_env.py,"
            " so conformance cannot be judged:\n" + installed.stderr[-4000:]
        )

    cmd = [
        sys.executable,
        str(ROOT / "tools" / "conformance.py"),
        "--timeout",
        str(WSTEST_TIMEOUT_S),
    ]
    selection = os.environ.get("WSHUB_AUTOBAHN_CASES")
    if selection:
        cmd += ["--cases", selection]
    proc = run_stopping_on_timeout(cmd, WSTEST_TIMEOUT_S + 5 * 60)
    print(proc.stdout)
    print(proc.stderr[-3000:], file=sys.stderr)
    assert proc.returncode == 0, (
        "Autobahn conformance is not strict-perfect:\n" + proc.stdout[-6000:] + proc.stderr[-2000:]
    )
    assert "conformance: PASS (strict)" in proc.stdout
