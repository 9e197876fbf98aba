"""`import wfa` is the public face: the doors resolve lazily, `help(wfa)` lists them, nothing heavy at import."""
from __future__ import annotations

import subprocess
import sys

import wfa

DOORS = {"create_aggregator", "list_aggregators", "bleu_uniqueness", "bleu_uniqueness_batch", "create_model",
         "create_reader", "list_readers",
         "retrieval_metrics", "evaluate", "train", "load_config", "write_shards", "list_methods", "Run"}


def test_every_door_is_a_documented_callable():
    assert DOORS <= set(wfa.__all__)
    for name in DOORS:
        door = getattr(wfa, name)
        assert callable(door) and door.__doc__, name


def test_the_train_door_survives_importing_the_trainer_module():
    import wfa.trainer

    assert wfa.train is wfa.trainer.train


def test_import_is_light_and_help_lists_the_doors():
    code = "import sys, wfa; print('torch' in sys.modules); help(wfa)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert out.splitlines()[0] == "False"  # no torch until a door is used
    for name in DOORS:
        assert f"    {name}(" in out or f"    class {name}(" in out, name
