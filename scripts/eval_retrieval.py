"""Evaluate retrieval (and zero-shot) of a checkpoint or an open_clip model; same options as ``wfa eval``."""
import sys

from wfa.commands.eval import main

if __name__ == "__main__":
    sys.exit(main())
