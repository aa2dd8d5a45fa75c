"""Packaging: the top-level ``twisted_plugins`` folder is installed as ``twisted.plugins``.

twistd only scans ``twisted/plugins`` directories on ``sys.path``, so the plugin folder
has to be mapped onto that package name explicitly (``find_packages`` would leave it out).
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["p2pnet", "p2pnet.*"]) + ["twisted.plugins"],
    package_dir={"twisted.plugins": "twisted_plugins"},
    package_data={"p2pnet": ["py.typed"]},
)
