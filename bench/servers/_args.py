"""Command line common to the peers' servers: --port P --mode echo|broadcast --deflate on|off.

A server that cannot do what is asked calls ``unsupported`` and exits with
status 3, which the driver reports as n/a.
"""

from __future__ import annotations

import argparse
import sys


def parse(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("echo", "broadcast"), default="echo")
    parser.add_argument("--deflate", choices=("on", "off"), default="off")
    args = parser.parse_args()
    args.deflate = args.deflate == "on"
    return args


def unsupported(what: str) -> None:
    print(f"unsupported: {what}", file=sys.stderr)
    sys.exit(3)
