"""``wshub.allocator``: glibc keeps freed message buffers for the next ones.

Each case runs in a child process: the settings are per process and the test
process's allocator is not ours to change.  What is compared is page faults
(``ru_minflt``), a count, not a time.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import websockets

from tests.integration.cli_support import free_port, start_program
from wshub import allocator

# Allocate eight 256 KiB payloads, free them, again and again: with glibc's
# defaults the freed top of the heap (2 MiB) is past its trim threshold, so it
# goes back to the kernel each round and the next round faults it in again.
PROBE = """
import resource, sys
from wshub.allocator import keep_freed_memory
if sys.argv[1] == "on":
    print(keep_freed_memory())
else:
    print("untouched")
SIZE, COUNT, ROUNDS = 256 * 1024, 8, 20
def one_round():
    held = [bytes(SIZE) for _ in range(COUNT)]
    del held
one_round()
one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(ROUNDS):
    one_round()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / ROUNDS)
"""

PAGES_PER_PAYLOAD = 256 * 1024 // os.sysconf("SC_PAGE_SIZE")


def probe(mode: str, **env: str) -> tuple[str, float]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    return out[0], float(out[1])


def require_glibc() -> None:
    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else ""
    if not (libc or "").startswith("glibc"):
        pytest.fail(f"these cases need glibc (this system's C library: {libc!r})")


def test_freed_payloads_are_reused_instead_of_faulted_in_again() -> None:
    require_glibc()
    said, tuned = probe("on")
    assert said == f"malloc keeps freed memory up to {allocator.TRIM_THRESHOLD >> 20} MiB"
    _, default = probe("off")
    print(f"\npage faults per round of 8 x 256 KiB: default {default}, tuned {tuned}")
    # by default at least one payload's pages are faulted in again each round
    assert default >= PAGES_PER_PAYLOAD
    assert tuned < PAGES_PER_PAYLOAD


def test_the_same_settings_from_the_environment() -> None:
    require_glibc()
    said, faults = probe("on", **allocator.ENVIRONMENT)
    assert said == "malloc settings from the environment kept"
    assert faults < PAGES_PER_PAYLOAD


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
    ],
)
def test_an_operators_settings_win(env: dict[str, str]) -> None:
    require_glibc()
    said, _ = probe("on", **env)
    assert said == "malloc settings from the environment kept"


@pytest.mark.parametrize("tuning", ["on", "off"])
async def test_wshub_serve_says_what_it_set(tuning: str) -> None:
    require_glibc()
    port = free_port()
    argv = [sys.executable, "-m", "wshub", "serve", "--port", str(port), "--deflate", "off"]
    program = await start_program([*argv, "--malloc-tuning", tuning], port)
    async with websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
        await ws.send(bytes(256 * 1024))
        assert await ws.recv() == bytes(256 * 1024)
    status, err = await program.stop()
    assert status == 0, err
    said = [line for line in err.splitlines() if "wshub serve: malloc" in line]
    if tuning == "on":
        assert len(said) == 1 and said[0].endswith(
            (
                f"malloc keeps freed memory up to {allocator.TRIM_THRESHOLD >> 20} MiB",
                "malloc settings from the environment kept",
            )
        ), err
    else:
        assert said == [], err
