"""The reader registry (`wfa.data.create_reader`, `register_reader`) and readers / methods from outside wfa:
`--import MODULE` and the `wfa.readers` / `wfa.methods` entry points. `wfa shards` is built from the registry,
so a registered reader is a sub-command with one option per declared argument."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import wfa
import wfa.cli
from wfa.data import readers
from wfa.data.readers import ReaderArg, comma_list, create_reader, get_reader, list_readers, register_reader
from wfa.errors import PluginError
from wfa.plugins import import_modules, split_imports

BUILTIN = {"synthetic", "karpathy", "bigearthnet", "bigearthnet-lmdb", "bigearthnet-txt"}
REPO = Path(__file__).resolve().parents[1]

# a user's reader module, as someone would write it: a factory registered with its arguments
COLOURS = '''
from PIL import Image
from wfa.data import ReaderArg, register_reader
from wfa.data.sample import Sample


class Colours:
    def __init__(self, colours, progress=True):
        self.colours, self.progress = list(colours), progress
        self.source = {"type": "colours", "colours": self.colours, "progress": progress}

    def __len__(self):
        return len(self.colours)

    def sample_at(self, i):  # with __len__: `--workers N` processes load items by index
        colour = self.colours[i]
        return Sample(id=f"c{i}", image=Image.new("RGB", (16, 16), colour),
                      captions=[f"a {colour} field", f"a plain {colour} square"], split="train")

    def __iter__(self):
        return (self.sample_at(i) for i in range(len(self)))


@register_reader("{name}", ReaderArg("colours", "comma-separated colour names", type=lambda t: t.split(",")),
                 help="solid colours")
def colours(colours, progress=True):
    return Colours(colours, progress)
'''

# a user's method module (what `wfa train --import` and the `wfa.methods` entry point load)
FIRST = '''
import torch
from wfa.methods import Method, SingleTextLoss, one_caption, register_method


@register_method("{name}")
class FirstCaption(Method):
    def select(self, batch, generator):
        return one_caption(batch, torch.zeros(batch["tokens"].shape[0], dtype=torch.long))

    def build_loss(self, local_loss):
        return SingleTextLoss(local_loss)
'''


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The reader registry, restored after the test (readers registered in it are forgotten)."""
    list_readers()  # the built-in ones first
    copy = dict(readers._REGISTRY)
    monkeypatch.setattr(readers, "_REGISTRY", copy)
    return copy


def test_builtin_readers_are_registered_and_exported() -> None:
    assert BUILTIN <= set(list_readers()) and list_readers() == sorted(list_readers())
    assert wfa.create_reader is create_reader and wfa.list_readers is list_readers
    from wfa.data import create_reader as lazy

    assert lazy is create_reader


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_declared_argument_is_an_option_of_its_shards_subcommand(name: str) -> None:
    spec = get_reader(name)
    assert spec.help and all(arg.help and arg.name in spec.parameters for arg in spec.args)
    parser = wfa.cli.build_parser(["shards"])
    required = [arg for arg in spec.args if spec.required(arg.name)]

    def line(args: list[ReaderArg]) -> list[str]:
        argv = ["shards", name, "--out", "o"]
        for arg in args:
            argv += [arg.option] if arg.switch else [arg.option, arg.choices[0] if arg.choices else "1"]
        return argv

    given = parser.parse_args(line(list(spec.args)))
    assert all(hasattr(given, arg.name) for arg in spec.args)  # each option reaches the factory's keyword
    bare = parser.parse_args(line(required))
    assert not [arg.name for arg in spec.args if arg not in required and hasattr(bare, arg.name)]  # factory default
    for arg in required:
        with pytest.raises(SystemExit):
            parser.parse_args(line([other for other in required if other is not arg]))


def test_create_reader_builds_what_the_class_builds() -> None:
    from wfa.data.synthetic import SyntheticReader

    reader = create_reader("synthetic", num_images=6, image_size=16, seed=2)
    assert isinstance(reader, SyntheticReader)
    assert reader.source == SyntheticReader(num_images=6, image_size=16, seed=2).source
    # keywords the command line does not offer reach the factory too
    assert create_reader("synthetic", num_images=4, splits=(1.0, 0.0, 0.0)).source["splits"] == [1.0, 0.0, 0.0]


def test_unknown_reader_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="unknown reader 'nope': expected one of .*karpathy.*synthetic"):
        create_reader("nope")


def test_registration_checks_the_declaration_against_the_factory(registry: dict) -> None:
    def factory(path, limit=None, fast=False):
        return path

    with pytest.raises(TypeError, match=r"\['size'\] not keyword parameters"):
        register_reader("bad", ReaderArg("path", "p"), ReaderArg("size", "s"), help="h")(factory)
    with pytest.raises(TypeError, match=r"needs \['path'\], which are not declared"):
        register_reader("bad", ReaderArg("limit", "l"), help="h")(factory)
    with pytest.raises(TypeError, match="declared twice"):
        register_reader("bad", ReaderArg("path", "p"), ReaderArg("path", "q"), help="h")(factory)
    with pytest.raises(TypeError, match="needs the default None or False"):
        register_reader("bad", ReaderArg("path", "p", switch=True), help="h")(factory)
    with pytest.raises(ValueError, match="'synthetic' is already registered"):
        register_reader("synthetic", ReaderArg("path", "p"), help="h")(factory)
    assert "bad" not in registry
    register_reader("fine", ReaderArg("path", "p"), ReaderArg("fast", "f", switch=True), help="h")(factory)
    spec = get_reader("fine")
    assert spec.required("path") and not spec.required("limit") and spec.default("limit") is None
    assert not spec.takes("progress") and create_reader("fine", path="x") == "x"


def test_a_registered_reader_is_a_shards_subcommand(registry: dict, tmp_path: Path, capsys) -> None:
    namespace: dict = {}
    exec(COLOURS.replace("{name}", "test-colours"), namespace)
    out = tmp_path / "out"
    code = wfa.cli.main(["shards", "test-colours", "--colours", "red,green", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    index = json.loads((out / "index.json").read_text())
    assert index["written"] == 2 and index["source"]["colours"] == ["red", "green"]
    assert index["source"]["progress"] is False  # --no-progress reaches a factory that takes `progress`
    with pytest.raises(SystemExit):  # --colours is required: the factory has no default for it
        wfa.cli.main(["shards", "test-colours", "--out", str(tmp_path / "again")])
    assert "--colours" in capsys.readouterr().err


def test_a_reader_cannot_take_an_option_of_the_writer(registry: dict, capsys) -> None:
    register_reader("clash", ReaderArg("out", "o"), help="h")(lambda out: out)
    assert wfa.cli.main(["shards", "clash", "--help"]) == 2
    assert "reader 'clash' declares the argument 'out'" in capsys.readouterr().err


def test_comma_list() -> None:
    assert comma_list("captioning, binary,,bounding box") == ("captioning", "binary", "bounding box")


def test_split_imports_takes_them_from_anywhere_on_the_line() -> None:
    argv = ["shards", "--import", "a", "x", "--import=b.c", "--out", "o", "--", "--import", "kept"]
    assert split_imports(argv) == (["a", "b.c"], ["shards", "x", "--out", "o", "--", "--import", "kept"])
    with pytest.raises(PluginError, match="needs a module name"):
        split_imports(["shards", "--import"])


def test_import_errors_are_one_line(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(PluginError, match="no module named 'no_such_module_19'"):
        import_modules(["no_such_module_19"])
    with pytest.raises(PluginError, match="no such file"):
        import_modules([str(tmp_path / "missing.py")])
    with pytest.raises(PluginError, match="already imported"):
        (tmp_path / "json.py").write_text("")
        import_modules([str(tmp_path / "json.py")])
    assert wfa.cli.main(["--import", "no_such_module_19", "shards", "synthetic", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wfa shards: error: --import no_such_module_19: no module named") and err.count("\n") == 1


def test_a_module_imported_from_the_command_line_registers_a_reader(tmp_path: Path) -> None:
    """`--import FILE.py` and `--import MODULE` (from the current folder), in a fresh `wfa` process; the
    worker processes of `--workers` find the module too."""
    (tmp_path / "my_colours.py").write_text(COLOURS.replace("{name}", "my-colours"))
    for where, given, workers in ((REPO, str(tmp_path / "my_colours.py"), "1"), (tmp_path, "my_colours", "0")):
        out = tmp_path / f"out-{where.name}"
        done = subprocess.run([sys.executable, "-m", "wfa.cli", "shards", "my-colours", "--colours", "blue,red",
                               "--out", str(out), "--no-progress", "--workers", workers, "--import", given],
                              capture_output=True, text=True, timeout=300, cwd=where)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((out / "index.json").read_text())["written"] == 2


def _install_entry_points(site: Path, entry_points: str) -> None:
    """A package installed in ``site`` (a folder on the path) that declares ``entry_points``."""
    info = site / "wfa_plugin_demo-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wfa-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def _python(site: Path, code: str) -> subprocess.CompletedProcess:
    env_path = f"{site}:{REPO}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, cwd=site)


def test_entry_points_of_an_installed_package_register_readers_and_methods(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "demo_readers.py").write_text(COLOURS.replace("{name}", "ep-colours"))
    (site / "demo_methods.py").write_text(FIRST.replace("{name}", "ep-first"))
    _install_entry_points(site, """
        [wfa.readers]
        ep-colours = demo_readers

        [wfa.methods]
        ep-first = demo_methods:FirstCaption
        """)
    done = _python(site, "import sys; from wfa.cli import main; "
                         "sys.exit(main(['shards', 'ep-colours', '--colours', 'red', '--out', 'out', '--no-progress']))")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((site / "out" / "index.json").read_text())["written"] == 1
    done = _python(site, "import wfa; print(wfa.list_methods())")
    assert done.returncode == 0 and "'ep-first'" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("case", ["broken", "registers nothing"])
def test_a_bad_entry_point_is_named_in_one_line(tmp_path: Path, case: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    module = "import no_such_dependency_19\n" if case == "broken" else "x = 1\n"
    (site / "demo_readers.py").write_text(module)
    _install_entry_points(site, """
        [wfa.readers]
        ep-bad = demo_readers
        """)
    done = _python(site, "import sys; from wfa.cli import main; sys.exit(main(['shards', '--help']))")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip()
    assert line.startswith("wfa shards: error: entry point 'ep-bad' = 'demo_readers' of wfa-plugin-demo")
    expected = "failed to load: ModuleNotFoundError" if case == "broken" else "registered no reader named 'ep-bad'"
    assert expected in line and "\n" not in line


@pytest.fixture
def method_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A method module file; the method and the module are forgotten after the test."""
    from wfa import methods

    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = tmp_path / "my_first_method.py"
    path.write_text(FIRST.replace("{name}", "imported-first"))
    yield path
    sys.modules.pop("my_first_method", None)


def test_wfa_train_trains_a_method_given_by_import(method_module: Path, tmp_path: Path, capsys) -> None:
    from wfa.data.synthetic import SyntheticReader
    from wfa.data.writer import write_shards

    shards = tmp_path / "shards"
    write_shards(SyntheticReader(num_images=8, seed=0, image_size=32, splits=(1.0, 0.0, 0.0)), shards,
                 progress=False)
    code = wfa.cli.main(["train", "--import", str(method_module), "method=imported-first", f"data.shards={shards}",
                         f"out={tmp_path / 'run'}", "model.name=wfa-vit-micro", "data.image_size=32",
                         "train.batch_size=4", "train.steps=1", "train.tensorboard=false"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert json.loads(out.out)["steps"] == 1


def test_the_trainer_entry_imports_before_the_config_names_the_method(method_module: Path) -> None:
    """`accelerate launch -m wfa.trainer --import MODULE method=...` parses --import itself."""
    from wfa.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--import", str(method_module), "method=imported-first"]))
    assert cfg.method == "imported-first"
