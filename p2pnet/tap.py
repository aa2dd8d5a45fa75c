# -*- test-case-name: tests.test_tap -*-
"""``twistd p2pnode``: command-line options to a running node service.

Defaults: UDP port 4455 on every interface, data in ``~/.p2pnet`` (the node id, and the
values it holds when the persistent value table is available).  ``--bootstrap`` names
nodes to join through (repeatable).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.python import usage

from p2pnet import ids

DEFAULT_PORT = 4455
DEFAULT_DATA_DIR = os.path.join("~", ".p2pnet")


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) to a tuple; ``usage.UsageError`` if bad."""
    host, sep, port = text.rpartition(":")
    if (not sep or not host or not (port.isascii() and port.isdigit())
            or not 1 <= int(port) <= 65535):
        raise usage.UsageError(f"not a host:port address: {text!r}")
    return host.strip("[]"), int(port)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run a p2pnet node: a Kademlia DHT peer, with its data kept in --data-dir."
    optParameters = [
        ["port", "p", DEFAULT_PORT, "UDP port of the DHT.", int],
        ["interface", "i", "0.0.0.0", "Interface to bind the DHT port to."],
        ["data-dir", "d", DEFAULT_DATA_DIR, "Directory for the node id and stored values."],
        ["network-id", None, "p2pnet", "Network id: nodes of other networks are ignored."],
    ]
    optFlags = [
        ["memory", "m", "Keep values in memory only (nothing written but the node id)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["bootstrap"] = []

    def opt_bootstrap(self, value: str) -> None:
        """Join through this host:port (repeatable)."""
        self["bootstrap"].append(parse_address(value))

    opt_b = opt_bootstrap

    def postOptions(self) -> None:
        self["data-dir"] = os.path.abspath(os.path.expanduser(self["data-dir"]))
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError("port must be in 0..65535")
        nid = self["network-id"].encode("utf-8")
        if not 1 <= len(nid) <= 32:
            raise usage.UsageError("network id must be 1..32 bytes")
        self["network-id"] = nid


def load_node_id(data_dir: str) -> bytes:
    """The node id kept in ``data_dir/node_id``; a new random one is written if none."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "node_id")
    try:
        with open(path, encoding="ascii") as f:
            return ids.key_from_hex(f.read().strip())
    except FileNotFoundError:
        pass
    except (ValueError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"{path} does not hold a node id: {e}") from e
    node_id = ids.random_key()
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(node_id.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return node_id


def makeService(options: Any) -> service.IService:
    """The node: its value table (LevelDB in the data dir, or memory) and its DHT."""
    from p2pnet.dht.service import DHTService
    from p2pnet.dht.table import IKVPTable, MemoryKVPTable

    node_id = load_node_id(options["data-dir"])
    top = service.MultiService()
    table: IKVPTable
    if options["memory"]:
        table = MemoryKVPTable()
    else:
        from p2pnet.store.errors import StoreError
        from p2pnet.dht.kvptable import LevelDBKVPTable

        path = os.path.join(options["data-dir"], "values")
        try:  # at start-up, before the reactor runs: blocking is fine here
            leveldb_table = LevelDBKVPTable.open_blocking(path)
        except StoreError as e:
            raise usage.UsageError(f"cannot open the value table: {e}") from e
        leveldb_table.setName("values")
        leveldb_table.setServiceParent(top)  # started first, stopped last
        table = leveldb_table
    dht = DHTService(
        port=options["port"],
        interface=options["interface"],
        node_id=node_id,
        network_id=options["network-id"],
        bootstrap=options["bootstrap"],
        kvp_table=table,
    )
    dht.setName("dht")
    dht.setServiceParent(top)
    return top
