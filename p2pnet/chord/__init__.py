"""The chord socket: a ``dict`` over the DHT, with its keys kept on every node.

:class:`~p2pnet.chord.socket.ChordSocket` stores each key's value in the Kademlia DHT
(:mod:`p2pnet.dht`) and floods add/delete notices over the mesh (:mod:`p2pnet.mesh`).
"""

from p2pnet.chord.errors import (
    ChordError,
    ChordTimeoutError,
    CorruptRecordError,
    KeySetFullError,
    ReactorThreadError,
    RecordError,
    SocketClosedError,
)

__all__ = [
    "ChordError",
    "ChordTimeoutError",
    "CorruptRecordError",
    "KeySetFullError",
    "ReactorThreadError",
    "RecordError",
    "SocketClosedError",
]
