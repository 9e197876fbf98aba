"""Config loading: YAML files, dotted overrides, errors, the saved resolved config, shipped configs."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from wfa.config import (Config, ConfigError, add_config_arguments, config_from_args, load_config,
                        parse_overrides, save_config)
from wfa.methods import list_methods

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_without_file():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.method == "bleu" and cfg.train.steps is None and cfg.train.epochs == 1.0


def test_yaml_nested_sections_and_types(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {
        "method": "attention", "seed": 3,
        "data": {"shards": "s", "max_captions": 4},
        "model": {"name": "wfa-vit-micro", "bands": ["B02", "B03"]},
        "aggregator": {"temperature": 2},  # int accepted for a float field
        "train": {"batch_size": 16, "steps": 7, "lr": "1e-3"},  # YAML 1.1 reads 1e-3 as a string
    })
    cfg = load_config(path)
    assert cfg.method == "attention" and cfg.seed == 3
    assert cfg.data.shards == "s" and cfg.data.max_captions == 4 and cfg.data.split == "train"
    assert cfg.model.bands == ["B02", "B03"]
    assert cfg.aggregator.temperature == 2.0 and isinstance(cfg.aggregator.temperature, float)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.steps == 7 and cfg.train.batch_size == 16


def test_overrides_take_precedence_and_parse_yaml_values(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"method": "bleu", "train": {"lr": 0.1, "steps": 5}})
    cfg = load_config(path, ["method=mean", "train.lr=1e-3", "train.grad_clip=null", "data.resampled=true",
                             "model.bands=[VV, VH]", "data.val_split=val"])
    assert cfg.method == "mean"
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.steps == 5  # untouched key stays
    assert cfg.train.grad_clip is None and cfg.data.resampled is True
    assert cfg.model.bands == ["VV", "VH"] and cfg.data.val_split == "val"


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1, "d": "x"}}, "e": [1, 2]}


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=1"], "train.lrr"),
    (["nope=1"], "valid keys"),
    (["train.batch_size=abc"], "train.batch_size: expected int"),
    (["train.batch_size=true"], "expected int"),  # bool is not an int here
    (["train.lr=fast"], "train.lr: expected float"),
    (["model.bands=B02"], "model.bands: expected list"),
    (["method=clip"], "method='clip' is not one of"),
    (["train.precision=fp8"], "train.precision"),
    (["train.batch_size=0"], "train.batch_size=0 must be >= 1"),
    (["train.steps=0"], "must be positive"),
    (["aggregator.lr_scale=0"], "aggregator.lr_scale=0.0 must be > 0"),
    (["trainsteps"], "key=value"),
    (["train=3"], "train: expected a mapping"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, overrides)


def test_unknown_key_lists_valid_keys(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"train": {"learning_rate": 1.0}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text and "train.learning_rate" in text
    assert "train.lr" in text and "train.batch_size" in text  # the valid keys are listed


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listing)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["method=multipos", "train.steps=9", "model.bands=[B04, B03, B02]", "out=runs/x"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert path.is_file()
    saved = yaml.safe_load(path.read_text())
    assert saved["method"] == "multipos" and saved["train"]["steps"] == 9 and saved["out"] == "runs/x"
    assert load_config(path) == cfg


def test_cli_arguments_resume_flag():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--resume", "latest", "train.steps=4", "method=random"])
    cfg = config_from_args(args)
    assert cfg.resume == "latest" and cfg.train.steps == 4 and cfg.method == "random"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    if name in ("ucm.yaml", "rsicd.yaml"):
        assert cfg.data.shards == f"shards/{name[:-5]}" and cfg.data.max_captions == 5 and cfg.train.steps
        for method in list_methods():  # one config per dataset, the method set on the command line
            assert load_config(CONFIGS / name, [f"method={method}"]).method == method
    if name == "bigearthnet_s1s2.yaml":
        assert cfg.data.image_size == 120 and cfg.model.in_chans is None  # bands come from the shards


def test_loader_config_takes_the_data_keys_it_shares_with_the_run():
    import dataclasses

    from wfa.data.loader import DataOptions

    cfg = load_config(CONFIGS / "rsicd.yaml", ["data.num_workers=3", "seed=4"])
    loader = cfg.loader_config(view="pairs")
    shared = [option.name for option in dataclasses.fields(DataOptions)]
    assert isinstance(cfg.data, DataOptions) and {"shards", "image_size", "shuffle", "augment"} <= set(shared)
    assert all(getattr(loader, name) == getattr(cfg.data, name) for name in shared)
    assert (loader.batch_size, loader.seed, loader.view, loader.shuffle_shards) == (32, 4, "pairs", True)
    assert "val_split" not in {f.name for f in dataclasses.fields(loader)}  # the run's own keys stay in DataConfig


def test_a_saved_config_reads_back_without_checking_this_machine(tmp_path):
    path = save_config(load_config(None, ["method=pairs"]), tmp_path / "config.yaml")
    path.write_text(path.read_text().replace("precision: 'no'", "precision: fp16").replace("method: pairs",
                                                                                            "method: elsewhere"))
    cfg = load_config(path, validate=False)  # a GPU run with a method registered by another module
    assert (cfg.train.precision, cfg.method) == ("fp16", "elsewhere")
    with pytest.raises(ConfigError, match="elsewhere"):
        load_config(path)


def test_method_names_and_options_are_checked():
    with pytest.raises(ConfigError, match="is not one of .*pairs-dedup"):
        load_config(None, ["method=paris"])
    with pytest.raises(ConfigError, match="keep_prob"):
        load_config(None, ["method_options.keep_prob=0"])
    with pytest.raises(ConfigError, match="hybrid_mix"):
        load_config(None, ["method_options.hybrid_mix=1.5"])
    with pytest.raises(ConfigError, match="max_minutes"):
        load_config(None, ["train.max_minutes=-1"])
    assert load_config(None, ["method_options.keep_prob=0.7"]).method_options.keep_prob == 0.7


def test_yaml_words_no_yes():
    assert load_config(None, ["train.precision=no"]).train.precision == "no"  # override: YAML 1.2 booleans
    assert load_config(None, ["data.resampled=true"]).data.resampled is True
    with pytest.raises(ConfigError, match="expected bool"):
        load_config(None, ["data.resampled=yes"])


def test_unquoted_no_in_a_file_is_explained(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  precision: no\n")
    with pytest.raises(ConfigError, match='quote the word'):
        load_config(path)
