"""Settings every tier shares: the program runs with the example stack's documentation names and
addresses, which it refuses outside tests, and never asks the internet for this machine's address
(tests of that check point it at a local server)."""

import os

os.environ.setdefault("GITEA_STACK_ALLOW_PLACEHOLDERS", "1")
os.environ.setdefault("GITEA_STACK_CHECKIP_URL", "off")
