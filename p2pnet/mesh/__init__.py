"""The mesh: peers over ZeroMQ, messages flooded once to every node."""
