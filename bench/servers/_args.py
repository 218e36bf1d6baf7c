"""Command line common to the peers' servers: --port P --mode M --deflate on|off.

M is echo, broadcast or pubsub (topics).

A server that cannot do what is asked calls ``unsupported`` and exits with
status 3, which the driver reports as n/a.
"""

from __future__ import annotations

import argparse
import sys


def parse(description: str, modes: tuple[str, ...] = ("echo", "broadcast")) -> argparse.Namespace:
    """The options; a ``--mode`` the server does not list in ``modes`` is unsupported.

    ``pubsub`` is the topics scenario (T1): the subset of wshub.v1 that the
    load generator speaks (``subscribe``, ``publish``, ``message``).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("echo", "broadcast", "pubsub"), default="echo")
    parser.add_argument("--deflate", choices=("on", "off"), default="off")
    args = parser.parse_args()
    if args.mode not in modes:
        unsupported(f"--mode {args.mode}")
    args.deflate = args.deflate == "on"
    return args


def unsupported(what: str) -> None:
    print(f"unsupported: {what}", file=sys.stderr)
    sys.exit(3)
