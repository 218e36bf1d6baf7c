"""The hub: :class:`WebSocket`, the public facade, and its parts.

=============  ==========================================================
``facade``     :class:`WebSocket`: the user's API, composed of the parts
``options``    the validated options (and the per-link limits)
``admission``  origin, per-IP counting, the handshake hook, client IDs and
               cookies, extension negotiation: an upgrade's yes (a reserved
               slot) or no
``handshake``  :class:`Handshake`: what the hook sees and a client keeps
``events``     handlers (``on`` / ``off``), running them, ``"error"``
``registry``   the local clients, send/broadcast, backplane routing
``topics``     which clients follow which topic, publish, presence
``fanout``     one message to many clients, the frame built once per group
``pings``      the periodic ping timer
=============  ==========================================================
"""

from __future__ import annotations

from .admission import split_target
from .events import CloseEvent
from .facade import WebSocket
from .handshake import Handshake
from .topics import PresenceInfo

__all__ = ["CloseEvent", "Handshake", "PresenceInfo", "WebSocket", "split_target"]
