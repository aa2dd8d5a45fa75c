"""The ``p2pnet`` command: talk to a running node through its control API."""

from p2pnet.cli.main import main

__all__ = ["main"]
