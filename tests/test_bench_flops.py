"""scripts/bench/flops.py: tower ratios and per-method FLOPs on a tiny model and synthetic shards."""
from __future__ import annotations

from conftest import load_script


def test_flops_of_towers_and_methods(tmp_path):
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards

    flops = load_script("scripts/bench/flops.py")
    tower = flops.tower_flops("wfa-vit-micro", 32, caption_tokens=12)
    assert tower["image_gflops"] > 0 and tower["caption_gflops"] > 0
    assert tower["image_to_caption"] == tower["image_gflops"] / tower["caption_gflops"]
    longer = flops.tower_flops("wfa-vit-micro", 32, caption_tokens=24)
    assert longer["caption_gflops"] > tower["caption_gflops"] and longer["image_gflops"] == tower["image_gflops"]

    shards = tmp_path / "shards"
    write_shards(SyntheticReader(num_images=16, seed=0, image_size=32, splits=(1.0, 0.0, 0.0)), shards,
                 progress=False)
    rows = {m: flops.method_flops(m, shards, "wfa-vit-micro", 32, 4, 2, tmp_path) for m in ("pairs", "bleu")}
    assert rows["pairs"]["captions_per_step"] == 4 and rows["bleu"]["captions_per_step"] == 20
    # same images per step; bleu's 5 captions per image cost more text FLOPs than pairs' one
    assert rows["bleu"]["gflops_per_step"] > rows["pairs"]["gflops_per_step"] > 0
    table = flops.markdown({"towers": [tower], "methods": list(rows.values()),
                            "settings": {"model": "m", "image_size": 32, "batch_size": 4, "steps": 2, "shards": "s"}})
    assert "| bleu |" in table and "| wfa-vit-micro |" in table
