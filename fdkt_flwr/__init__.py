"""fdkt-flwr: Federated Domain-specific Knowledge Transfer (FDKT) as a Flower app.

Clients fine-tune a small generator with DP-SGD on private text and release only
DP demonstrations; the server's LLM turns them into new in-domain samples that the
clients use to train their small task models.
"""

__version__ = "0.1.0"
