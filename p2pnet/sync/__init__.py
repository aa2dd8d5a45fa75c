"""The sync socket: a dict replicated on every node of a mesh, with py2p's leases."""
