"""Subcommands of the ``wfa`` command line; each module exposes ``add_arguments`` and ``run``."""

COMMANDS = ("demo", "shards", "redundancy", "train", "eval", "study", "benchmark")
