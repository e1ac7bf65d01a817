"""rlp-align: RLHF with Reward Learning on Policy (RLP)."""

__version__ = "0.1.0"
