"""Continual learning of CLIP models: a benchmark suite (PETs, PEGP, metrics, leaderboards)."""
__version__ = "0.1.0"
