"""The reader registry: every data set that ``wfa shards`` converts is a reader registered under a name.

A reader is an iterable of :class:`~wfa.data.sample.Sample` (or :class:`~wfa.data.sample.Rejected` for an item
it cannot use) with a ``source`` dict for ``index.json`` -- what :func:`wfa.data.writer.write_shards` takes. A
*factory* (a function or a reader class) builds one from keyword arguments and is registered with the
arguments it takes from the command line::

    @register_reader("my-captions",
                     ReaderArg("captions", "the caption file"),
                     ReaderArg("min_words", "drop captions shorter than this", type=int),
                     help="my caption file and its images")
    def my_captions(captions: str, min_words: int = 1) -> MyReader:
        return MyReader(captions, min_words=min_words)

Then ``create_reader("my-captions", captions="c.json")`` builds it and ``wfa shards my-captions --captions
c.json --out DIR`` writes it: ``wfa shards`` has one sub-command per registered reader, with one option per
declared argument. A declared argument is a keyword of the factory; the factory's signature alone gives its
default (an argument without one is required) and the option shows it. ``create_reader`` passes any other
keyword the factory takes, so Python callers reach options the command line does not offer. A factory that
has a ``progress`` parameter gets ``progress=False`` from ``wfa shards --no-progress``.

The built-in readers register in their modules (listed in ``BUILTIN_MODULES``, imported on the first look-up);
a package's readers come from its ``wfa.readers`` entry points, a script's from ``--import`` (see
:mod:`wfa.plugins`). Nothing here imports numpy or torch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable, Sequence, TypeVar

BUILTIN_MODULES = ("wfa.data.synthetic", "wfa.data.karpathy", "wfa.data.bigearthnet", "wfa.data.lmdb_reader",
                   "wfa.data.bigearthnet_txt")
ENTRY_POINT_GROUP = "wfa.readers"

F = TypeVar("F", bound=Callable[..., Any])


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``: the command-line form of a list argument (empty items dropped)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class ReaderArg:
    """One argument of a reader: a keyword of its factory and an option of ``wfa shards NAME``.

    ``name`` is the keyword; the option is ``--name`` with ``-`` for ``_`` unless ``flag`` says otherwise.
    ``type`` turns the option's text into the value (``comma_list`` for a list); ``switch``: an option without a
    value that passes ``True``; ``repeat``: an option that may be given several times, passing a list.
    """

    name: str
    help: str
    type: Callable[[str], Any] = str
    choices: Sequence[str] | None = None
    switch: bool = False
    repeat: bool = False
    flag: str | None = None
    metavar: str | None = None

    @property
    def option(self) -> str:
        """The command-line option, e.g. ``--num-images``."""
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class ReaderSpec:
    """A registered reader: its ``name``, one-line ``help``, declared ``args`` and ``factory``."""

    name: str
    help: str
    args: tuple[ReaderArg, ...]
    factory: Callable[..., Any]
    parameters: dict[str, inspect.Parameter] = field(repr=False, compare=False, default_factory=dict)

    def default(self, arg: str) -> Any:
        """The default of argument ``arg`` (the factory's), ``inspect.Parameter.empty`` when it is required."""
        return self.parameters[arg].default

    def required(self, arg: str) -> bool:
        """Whether the factory needs argument ``arg``."""
        return self.parameters[arg].default is inspect.Parameter.empty

    def takes(self, keyword: str) -> bool:
        """Whether ``keyword`` is a named parameter of the factory (declared or not; ``**kwargs`` do not count)."""
        return keyword in self.parameters and self.parameters[keyword].kind is not inspect.Parameter.VAR_KEYWORD


_REGISTRY: dict[str, ReaderSpec] = {}


def register_reader(name: str, *args: ReaderArg, help: str) -> Callable[[F], F]:
    """Decorator registering a reader factory (function or class) under ``name`` with its command-line ``args``.

    ``TypeError`` when an argument is not a keyword of the factory or is declared twice, or a parameter without
    a default is not declared (the command line could not give it); ``ValueError`` when
    ``name`` is taken. The factory is returned unchanged.
    """

    def decorator(factory: F) -> F:
        parameters = dict(inspect.signature(factory).parameters)
        names = [arg.name for arg in args]
        missing = [n for n in names if n not in parameters or parameters[n].kind in
                   (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL,
                    inspect.Parameter.VAR_KEYWORD)]
        if missing:
            raise TypeError(f"register_reader({name!r}): {missing} not keyword parameters of {factory.__qualname__}")
        undeclared = [n for n, p in parameters.items() if p.default is inspect.Parameter.empty and n not in names
                      and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        if undeclared:
            raise TypeError(f"register_reader({name!r}): {factory.__qualname__} needs {undeclared}, which are not "
                            "declared (declare them, or give them a default)")
        if len(set(names)) != len(names):
            raise TypeError(f"register_reader({name!r}): an argument is declared twice in {names}")
        for arg in args:
            if (arg.switch or arg.repeat) and parameters[arg.name].default not in (None, False):
                raise TypeError(f"register_reader({name!r}): switch or repeated argument {arg.name!r} needs the "
                                "default None or False in the factory")
        if name in _REGISTRY:
            raise ValueError(f"reader {name!r} is already registered ({_REGISTRY[name].factory.__qualname__})")
        _REGISTRY[name] = ReaderSpec(name, help, tuple(args), factory, parameters)
        return factory

    return decorator


def _load() -> None:
    for module in BUILTIN_MODULES:
        import_module(module)
    from wfa.plugins import load_entry_points

    load_entry_points(ENTRY_POINT_GROUP, _REGISTRY, "reader")


def list_readers() -> list[str]:
    """Names of the registered readers, sorted (the built-in ones, installed packages', imported modules')."""
    _load()
    return sorted(_REGISTRY)


def get_reader(name: str) -> ReaderSpec:
    """The :class:`ReaderSpec` of ``name``; ``ValueError`` listing the readers otherwise."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown reader {name!r}: expected one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_reader(name: str, **kwargs: Any) -> Any:
    """The reader ``name`` built by its factory from ``kwargs`` (e.g. ``create_reader("synthetic",
    num_images=100)``); the factory's own errors (``ValueError`` for an unusable source) pass through."""
    return get_reader(name).factory(**kwargs)
