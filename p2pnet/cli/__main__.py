"""``python -m p2pnet.cli``: the ``p2pnet`` command."""

from p2pnet.cli.main import console_script

console_script()
