"""The cluster registry as one node caches it: every other node's clients.

:class:`ClusterRegistry` is the copy each :class:`~wshub.backplane.RedisBackplane`
keeps of the other nodes' registry hashes, updated by their join/leave
events and reloaded from Redis every few heartbeats.  It answers at once,
without Redis, who owns a client ID (so ``send`` never blocks) and how many
clients an IP key has on the other nodes (cluster-wide ``limit_by_ip``).
What it holds has been checked (its MAC) before it gets here.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..policy import PerIpCounter

__all__ = ["ClusterRegistry"]


class ClusterRegistry:
    """Client ID → (IP key, event) per node, with the owner of each ID and
    the count of each IP key kept in step."""

    def __init__(self) -> None:
        self._clients: dict[str, dict[str, tuple[str, str]]] = {}
        self._owner: dict[str, str] = {}
        self._ip_counts = PerIpCounter()

    def owner(self, client_id: str) -> str | None:
        """The node ``client_id`` is connected to, or None."""
        return self._owner.get(client_id)

    def ip_count(self, key: str) -> int:
        """How many clients of IP key ``key`` the other nodes have."""
        return self._ip_counts.count(key)

    def nodes(self) -> list[str]:
        """The nodes known (heard from, or found in Redis)."""
        return list(self._clients)

    def knows(self, node: str) -> bool:
        return node in self._clients

    def node_count(self) -> int:
        return len(self._clients)

    def client_ids(self) -> list[str]:
        """Every client ID of the other nodes."""
        return list(self._owner)

    def client_count(self, node: str | None = None) -> int:
        """The clients of ``node``, or of every node."""
        if node is None:
            return len(self._owner)
        return len(self._clients.get(node, ()))

    def add_node(self, node: str) -> None:
        """Know ``node`` (with no clients yet if it is new)."""
        self._clients.setdefault(node, {})

    def add(self, node: str, client_id: str, ip_key: str, event: str) -> None:
        """``client_id`` joined on ``node``."""
        clients = self._clients.setdefault(node, {})
        old = clients.get(client_id)
        if old is not None:
            self._ip_counts.release(old[0])
        else:
            prev = self._owner.get(client_id)
            if prev is not None and prev != node:
                # The ID moved between nodes and the leave is still in flight.
                self.remove(prev, client_id)
        clients[client_id] = (ip_key, event)
        self._owner[client_id] = node
        self._ip_counts.try_acquire(ip_key, 0)  # 0: no limit, always counted

    def remove(self, node: str, client_id: str) -> None:
        """``client_id`` left ``node``."""
        clients = self._clients.get(node)
        if not clients:
            return
        entry = clients.pop(client_id, None)
        if entry is None:
            return
        self._ip_counts.release(entry[0])
        if self._owner.get(client_id) == node:
            del self._owner[client_id]

    def drop_node(self, node: str) -> None:
        """Forget ``node`` and its clients."""
        clients = self._clients.pop(node, None)
        if not clients:
            return
        for client_id, (ip_key, _event) in clients.items():
            self._ip_counts.release(ip_key)
            if self._owner.get(client_id) == node:
                del self._owner[client_id]

    def replace_node(self, node: str, entries: Iterable[tuple[str, str, str]]) -> None:
        """``node``'s clients are ``entries`` (client ID, IP key, event), no others."""
        self.drop_node(node)
        for client_id, ip_key, event in entries:
            self.add(node, client_id, ip_key, event)
