"""p2pnet: a Twisted peer-to-peer protocol suite (Kademlia DHT, mesh/sync/chord sockets, stores)."""

__version__ = "0.1.0"
