"""fdkt-flwr: Federated Domain-specific Knowledge Transfer (FDKT) as a Flower app.

Clients fine-tune a small generator with DP-SGD on private text and release only
DP demonstrations; the server's LLM turns them into new in-domain samples that the
clients use to train their small task models.
"""

import os

# A simulation runs the ServerApp and several ClientApps as processes on the same cores. With
# OpenMP's default busy-waiting, idle torch threads spin and starve the process that has work:
# measured on a 2-core machine, SmolLM2 generation fell from 63 to 2.5 tokens/s. Passive
# waiting must be chosen before torch loads its OpenMP runtime, i.e. here, before any import
# of torch; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
