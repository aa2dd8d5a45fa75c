"""p2pnet's trial suite: ``python -m twisted.trial tests``."""

import os

from hypothesis import HealthCheck, settings

# Deterministic in CI (and by default): the same examples every run, no deadline on a
# shared 2-core machine, no example database written into the checkout.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
