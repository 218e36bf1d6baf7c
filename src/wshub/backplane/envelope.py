"""What crosses Redis between nodes: the wire format and its seal.

Data and control messages are packed here (:func:`pack`, :func:`unpack`),
then sealed (:class:`Seal`) under keys derived from the cluster secret
(:func:`cluster_key`, :class:`ClusterKey`): an HMAC over the channel, the
sender, its clock and counter and the message, checked on arrival against a
replay window.  Registry entries are signed the same way.  What fails a
check raises :class:`Rejected` with one of ``REJECT_REASONS``.
"""

from __future__ import annotations

import hmac
import json
import struct
import time

from ..errors import WsHubError

# ---------------------------------------------------------------- wire format
#
# Data messages (channels :all and :to:<node>) are bytes:
#   kind (1) | len(origin) (1) | origin | len(meta) (2, big-endian) | meta | payload
# kind: B/b broadcast text/binary (meta: JSON {"e": event, "x": [excluded ids]}
#       or empty), T send a str (encoded on the receiving node with the
#       client's encoding), t/y send text/binary payload bytes (meta: the ID),
#       M "no such client" answered to the sender of a direct send (meta: ID).
# Control messages (channel :ctl) are JSON objects with "t" (hb, join, leave,
# bye) and "n" (the node).

_HEAD = struct.Struct("!cB")
_META = struct.Struct("!H")


def pack(kind: bytes, origin: bytes, meta: bytes, payload: bytes = b"") -> bytes:
    return b"".join((_HEAD.pack(kind, len(origin)), origin, _META.pack(len(meta)), meta, payload))


def unpack(data: bytes) -> tuple[bytes, str, bytes, bytes]:
    kind, olen = _HEAD.unpack_from(data)
    pos = _HEAD.size
    origin = data[pos : pos + olen].decode("ascii")
    pos += olen
    (mlen,) = _META.unpack_from(data, pos)
    pos += _META.size
    meta = data[pos : pos + mlen]
    if len(meta) != mlen:
        raise ValueError("truncated backplane message")
    return kind, origin, meta, data[pos + mlen :]


#: Where a presence entry has the IP key of a registry entry: this, then the topic.
PRESENCE_TAG = "topic "


def topic_meta(name: str, rest: bytes) -> bytes:
    """The meta of a topic message: the topic (length-prefixed), then ``rest``."""
    raw = name.encode("utf-8")
    return _META.pack(len(raw)) + raw + rest


def split_topic_meta(meta: bytes) -> tuple[str, bytes]:
    (size,) = _META.unpack_from(meta)
    end = _META.size + size
    if len(meta) < end:
        raise ValueError("truncated topic name")
    return meta[_META.size : end].decode("utf-8"), meta[end:]


# ------------------------------------------------------------- authentication
#
# Redis is a trust boundary: whoever can PUBLISH or HSET there must not be
# able to speak for a node.  Every key comes from the cluster key
#   K = HMAC-SHA256(cluster secret, "wshub backplane v1")
# (``SessionSigner.derive`` makes the same K from the hub's secret):
#   key id = HMAC(K, "key id")[:4]   names K (a node may accept two during a rotation)
#   message key = HMAC(K, "messages"), entry key = HMAC(K, "registry entries")
# A sealed message (every PUBLISH, on every channel):
#   key id (4) | MAC (32) | version (1) | counter (8) | time ms (8) | len(origin) (1)
#   | origin | the message above (data bytes or control JSON)
#   MAC = HMAC-SHA256(message key, len(channel) (4) | channel | all after the MAC)
# so the MAC covers the channel (the target node), the sender, its clock and
# counter, the kind, the metadata and the payload.  A registry entry (the
# value of field <client ID> in <prefix>:clients:<node>):
#   key id (4) | MAC (32) | ip key "\t" path
#   MAC = HMAC-SHA256(entry key, len(node) (4) | node | len(id) (4) | id | ip key "\t" path)

#: The label that turns a shared secret into the cluster key.
CLUSTER_KEY_LABEL = b"wshub backplane v1"

_VERSION = 1
#: The version byte of a kept publication (a topic history's entry): its
#: position follows the sealed message on the wire (``streams``).
VERSION_KEPT = 2
_KEY_ID = 4
_MAC = 32
_SEAL = struct.Struct("!BQQB")  # version, counter, time ms, len(origin)
_LEN = struct.Struct("!I")
_SEALED_MIN = _KEY_ID + _MAC + _SEAL.size
VERSION_AT = _KEY_ID + _MAC
_ORIGIN_LEN_AT = _SEALED_MIN - 1
#: Counters per sender remembered behind its highest: messages of one node
#: may arrive out of order by up to this many (heartbeats and the ordered
#: writer use different Redis connections, and the writer sends up to 1,000
#: messages a round trip); older ones count as replays.  16,384 bits cost
#: about 0.3 us more per message than 4,096.
_REPLAY_SLOTS = 16384
_REPLAY_MASK = (1 << _REPLAY_SLOTS) - 1


class ClusterSecretMissing(WsHubError, ValueError):
    """A Redis backplane was started with no secret shared by the cluster's nodes."""


class Rejected(WsHubError):
    """An incoming message or registry entry failed a check (``reason``: REJECT_REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def cluster_key(secret: bytes | str) -> bytes:
    """The cluster key of a shared secret: HMAC-SHA256(secret, ``CLUSTER_KEY_LABEL``)."""
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("a cluster secret must be a non-empty str or bytes")
    return hmac.digest(secret, CLUSTER_KEY_LABEL, "sha256")


class ClusterKey:
    """One cluster key's subkeys, as HMAC objects keyed once (each MAC copies one)."""

    __slots__ = ("entries", "key_id", "messages")

    def __init__(self, key: bytes) -> None:
        self.key_id = hmac.digest(key, b"key id", "sha256")[:_KEY_ID]
        self.messages = hmac.new(hmac.digest(key, b"messages", "sha256"), digestmod="sha256")
        self.entries = hmac.new(hmac.digest(key, b"registry entries", "sha256"), digestmod="sha256")


class Seal:
    """Seals what one node publishes and opens what it receives.

    ``keys``: cluster keys, the first signs, every one is accepted.
    ``window``: seconds a message's timestamp may be away from this node's
    clock.  Within the window, the per-sender counter catches a replay.
    """

    __slots__ = ("_accepted", "_counter", "_origin", "_senders", "_signing", "window_ms")

    def __init__(self, node: str, keys: list[bytes], window: float) -> None:
        self._origin = node.encode("ascii")
        if len(self._origin) > 255:
            raise ValueError("node ID too long")
        made = [ClusterKey(k) for k in keys]
        self._signing = made[0]
        self._accepted = {k.key_id: k for k in reversed(made)}
        self._counter = 0
        self.window_ms = int(window * 1000)
        # sender → [highest counter, bitmap of the counters seen behind it, last time (ms)]
        self._senders: dict[bytes, list[int]] = {}

    @property
    def key_id(self) -> str:
        """The signing key's ID (hex): what two nodes with the same secret share."""
        return self._signing.key_id.hex()

    def seal(self, channel: bytes, inner: bytes, version: int = _VERSION) -> bytes:
        self._counter = counter = self._counter + 1
        origin = self._origin
        head = _SEAL.pack(version, counter, int(time.time() * 1000), len(origin)) + origin
        key = self._signing
        mac = key.messages.copy()
        mac.update(_LEN.pack(len(channel)) + channel + head)
        mac.update(inner)
        return b"".join((key.key_id, mac.digest(), head, inner))

    def is_own(self, data: bytes) -> bool:
        """Whether ``data`` says it is from this node (checked by :meth:`open` only
        when it matters: a node drops its own broadcasts unopened)."""
        origin = self._origin
        start = _SEALED_MIN
        return (
            len(data) > _ORIGIN_LEN_AT
            and data[_ORIGIN_LEN_AT] == len(origin)
            and data[start : start + len(origin)] == origin
        )

    def open(
        self, channel: bytes, data: bytes, now: float | None, version: int = _VERSION
    ) -> tuple[str, bytes]:
        """``(origin node, message)`` of a sealed message of ``version``; raises
        :class:`Rejected`.  ``now`` None: a kept message read back from its
        stream, whose age and counter are not checked (its MAC still is)."""
        size = len(data)
        if size < _SEALED_MIN:
            raise Rejected("malformed", f"{size} bytes, shorter than any sealed message")
        # Nothing but the key ID is read before the MAC is checked.
        key = self._accepted.get(data[:_KEY_ID])
        if key is None:
            raise Rejected(
                "unknown_key",
                f"signed with key {data[:_KEY_ID].hex()}, this node's is {self.key_id}: "
                "a node with another cluster secret, or a forgery",
            )
        mac = key.messages.copy()
        mac.update(_LEN.pack(len(channel)) + channel)
        mac.update(memoryview(data)[_KEY_ID + _MAC :])
        if not hmac.compare_digest(mac.digest(), data[_KEY_ID : _KEY_ID + _MAC]):
            raise Rejected("bad_mac", "its MAC does not match: forged or altered")
        expected = version
        version, counter, sent_ms, olen = _SEAL.unpack_from(data, _KEY_ID + _MAC)
        if version != expected:
            raise Rejected(
                "bad_version", f"format version {version} where {expected} belongs (1 and 2 known)"
            )
        start = _SEALED_MIN + olen
        if size < start:
            raise Rejected("malformed", f"{size} bytes, shorter than its own header")
        origin_b = data[_SEALED_MIN:start]
        if not origin_b.isascii():
            raise Rejected("malformed", "origin node ID not ASCII")
        origin = origin_b.decode("ascii")
        if now is None:
            return origin, data[start:]
        now_ms = int(now * 1000)
        if abs(now_ms - sent_ms) > self.window_ms:
            raise Rejected(
                "stale",
                f"sent by node {origin} {(now_ms - sent_ms) / 1000:.1f}s ago by its clock "
                f"(window ±{self.window_ms / 1000:g}s): a replay, or clocks out of sync",
            )
        self._check_counter(origin_b, origin, counter, now_ms)
        return origin, data[start:]

    def _check_counter(self, origin_b: bytes, origin: str, counter: int, now_ms: int) -> None:
        state = self._senders.get(origin_b)
        if state is None:
            self._senders[origin_b] = [counter, 1, now_ms]
            return
        top = state[0]
        if counter > top:
            shift = counter - top
            state[1] = ((state[1] << shift) | 1) & _REPLAY_MASK if shift < _REPLAY_SLOTS else 1
            state[0] = counter
        else:
            behind = top - counter
            bit = 1 << behind
            if behind >= _REPLAY_SLOTS or state[1] & bit:
                raise Rejected("replay", f"counter {counter} of node {origin} already seen")
            state[1] |= bit
        state[2] = now_ms

    def forget_silent(self, now: float) -> None:
        """Forget the counters of senders silent for twice the window: a replay
        of anything they sent is stale by then."""
        limit = int(now * 1000) - 2 * self.window_ms
        for sender, state in list(self._senders.items()):
            if state[2] < limit:
                del self._senders[sender]

    def sign_entry(self, node: str, client_id: str, ip_key: str, event: str) -> bytes:
        value = f"{ip_key}\t{event}".encode()
        key = self._signing
        return key.key_id + self._entry_mac(key, node.encode(), client_id.encode(), value) + value

    def open_entry(self, node: str, raw_id: bytes, raw: bytes) -> tuple[str, str, str]:
        """``(client ID, ip key, path)`` of a registry entry; raises :class:`Rejected`."""
        key = self._accepted.get(raw[:_KEY_ID])
        if key is None or len(raw) < _KEY_ID + _MAC:
            raise Rejected(
                "bad_entry",
                f"entry {raw_id[:64]!r} is not signed with this node's key {self.key_id} "
                "(a node with another cluster secret, or a forgery)",
            )
        value = raw[_KEY_ID + _MAC :]
        mac = self._entry_mac(key, node.encode("utf-8", "surrogateescape"), raw_id, value)
        if not hmac.compare_digest(mac, raw[_KEY_ID : _KEY_ID + _MAC]):
            raise Rejected("bad_entry", f"entry {raw_id[:64]!r}: its MAC does not match")
        try:
            client_id = raw_id.decode("utf-8")
            ip_key, tab, event = value.decode("utf-8").partition("\t")
        except UnicodeDecodeError:
            raise Rejected("bad_entry", f"entry {raw_id[:64]!r} is not UTF-8") from None
        if not tab:
            raise Rejected("bad_entry", f"entry {raw_id[:64]!r} has no path")
        return client_id, ip_key, event

    @staticmethod
    def _entry_mac(key: ClusterKey, node: bytes, client_id: bytes, value: bytes) -> bytes:
        mac = key.entries.copy()
        mac.update(b"".join((_LEN.pack(len(node)), node, _LEN.pack(len(client_id)), client_id)))
        mac.update(value)
        return mac.digest()


#: The fields of each control message (all strings); anything else is dropped.
_CONTROL_FIELDS: dict[str, frozenset[str]] = {
    "hb": frozenset({"t", "n"}),
    "hello": frozenset({"t", "n"}),
    "bye": frozenset({"t", "n"}),
    "join": frozenset({"t", "n", "c", "ip", "e"}),
    "leave": frozenset({"t", "n", "c", "ip"}),
}


def control_message(origin: str, msg: object) -> dict[str, str]:
    """``msg`` if it is a well-formed control message of node ``origin``; else Rejected."""
    if not isinstance(msg, dict):
        raise Rejected("bad_content", "a control message that is not a JSON object")
    kind = msg.get("t")
    fields = _CONTROL_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise Rejected("unknown_kind", f"control message of kind {str(kind)[:40]!r}")
    if msg.keys() != fields or not all(isinstance(v, str) for v in msg.values()):
        raise Rejected(
            "bad_content", f"{kind} with fields {sorted(msg)[:8]}, not {sorted(fields)} (strings)"
        )
    if msg["n"] != origin:
        raise Rejected("bad_content", f"{kind} names node {msg['n'][:40]!r}, sealed by {origin}")
    return msg


def unpack_sealed(origin: str, data: bytes, kinds: bytes) -> tuple[bytes, bytes, bytes]:
    """``(kind, meta, payload)`` of a data message that ``origin`` sealed; its
    kind must be one of ``kinds`` (the ones its channel carries)."""
    try:
        kind, inner_origin, meta, payload = unpack(data)
    except (ValueError, struct.error) as exc:
        raise Rejected("bad_content", f"not a data message: {exc}") from None
    if len(kind) != 1 or kind not in kinds:
        raise Rejected("unknown_kind", f"data message of kind {kind!r}")
    if inner_origin != origin:
        raise Rejected("bad_content", f"says it is from {inner_origin!r}, sealed by {origin}")
    return kind, meta, payload


def excluded_ids(rest: bytes) -> frozenset[str]:
    """The excluded IDs that follow a publication's topic in its metadata."""
    if not rest:
        return frozenset()
    ids = json.loads(rest)
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise Rejected("bad_content", "publication exclude list is not [IDs]")
    return frozenset(ids)


def as_text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)
