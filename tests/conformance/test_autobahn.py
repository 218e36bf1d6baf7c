"""The conformance gate: the whole Autobahn|Testsuite, strict.

Runs ``tools/conformance.py`` (all 517 cases against ``wshub serve --mode
echo --deflate on``; both code paths when the C accelerator is built) and
fails on any case that is not OK or INFORMATIONAL.  ``make test`` runs this
in parallel with the rest of the suite (it takes minutes, not seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.conformance


@pytest.mark.timeout(50 * 60)
def test_autobahn_strict_all_cases() -> None:
    harness = ROOT.parent / "shared" / "tools" / "autobahn" / "run"
    if not harness.exists() and "WSHUB_SHARED" not in os.environ:
        pytest.fail(
            f"the Autobahn harness is missing at {harness} (needs ../shared beside the repo)"
        )
    selection = os.environ.get("WSHUB_AUTOBAHN_CASES")
    cmd = [sys.executable, str(ROOT / "tools" / "conformance.py")]
    if selection:
        cmd += ["--cases", selection]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=45 * 60)
    print(proc.stdout)
    print(proc.stderr[-3000:], file=sys.stderr)
    assert proc.returncode == 0, (
        "Autobahn conformance is not strict-perfect:\n" + proc.stdout[-6000:]
    )
    assert "conformance: PASS (strict)" in proc.stdout
