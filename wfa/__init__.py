"""wfa: redundancy-aware contrastive pretraining of vision-language models on remote-sensing data."""

__version__ = "0.1.0"
