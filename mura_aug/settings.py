"""One settings dataclass per stage: every default once, with its unit and help text.

A stage declares its settings like this::

    @dataclasses.dataclass
    class RunSettings(StageSettings):
        kimg: float = setting(1000.0, "train until this many thousand real images were shown to D", unit="kimg")

and everything else is made from that declaration:
- the command line: `RunSettings.add_arguments(parser)` adds `--kimg` with its type, choices and a help text
  that ends in the default and the unit; `RunSettings.given(args)` is what the user typed, `from_args` the
  settings with the defaults filled in;
- the notebooks: the parameters cell assigns `KIMG` (the field name in upper case); `from_parameters`
  reads such a dict, and a test checks every notebook's cell against its stage's settings (names, and the
  default or the notebook's own `notebook_default`);
- stored JSON: `to_dict()` uses the field names (`kimg`), `from_dict` reads them back;
- the docs: `markdown_table()` is the parameter table of the stage's docs page (a test keeps them equal;
  `python -m mura_aug.docs` rewrites the tables in docs/).

So a setting has one name everywhere: the flag `--kimg-per-tick`, the parameter `KIMG_PER_TICK` and the key
`kimg_per_tick` are the same word.
"""
from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import types
import typing
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

from mura_aug.errors import UserError

T = TypeVar("T", bound="StageSettings")
_NO_NOTEBOOK_DEFAULT = object()
RESOLUTIONS = tuple(2 ** n for n in range(4, 11))  # 16 ... 1024 px: StyleGAN2 needs a power of two


def setting(default: Any, help: str, *, unit: Optional[str] = None, choices: Optional[Sequence[Any]] = None,
            cli: bool = True, notebook: bool = True, notebook_default: Any = _NO_NOTEBOOK_DEFAULT,
            aliases: Sequence[str] = (), metavar: Optional[str] = None, stored: bool = True):
    """A dataclass field of a stage's settings.

    help: what it does, in words (the default and the unit are appended to the CLI's help by themselves);
    unit: e.g. "px", "kimg", "minutes" (None for counts of things named in the help, flags and names);
    choices: the allowed values; cli / notebook: whether the command line / the notebooks' parameters cells
    have it; notebook_default: where the notebooks start from another value than the command line (say why
    in the help); aliases: older flag names still accepted on the command line; stored: kept in the stage's
    stored settings (to_dict)."""
    metadata = dict(help=help, unit=unit, choices=tuple(choices) if choices is not None else None, cli=cli,
                    notebook=notebook, notebook_default=notebook_default, aliases=tuple(aliases), metavar=metavar,
                    stored=stored)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    """kimg_per_tick -> --kimg-per-tick"""
    return "--" + name.replace("_", "-")


def parameter_name(name: str) -> str:
    """kimg_per_tick -> KIMG_PER_TICK (the notebooks' parameters cell)"""
    return name.upper()


def _base_type(annotation) -> Tuple[str, bool, bool]:
    """Optional[List[int]] -> ('int', optional=True, many=True)."""
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(types, "UnionType", typing.Union)) and \
            type(None) in args:
        optional = True
        annotation = next(arg for arg in args if arg is not type(None))
    many = typing.get_origin(annotation) in (list, tuple, collections.abc.Sequence)
    if many:
        annotation = typing.get_args(annotation)[0]
    return getattr(annotation, "__name__", str(annotation)), optional, many


def _converter(kind: str, optional: bool, name: str):
    def convert(text: str):
        if optional and text.strip().lower() in ("none", "null", ""):
            return None
        try:
            if kind == "int":
                return int(text)
            if kind == "float":
                return float(text)
            if kind == "bool":
                lowered = text.strip().lower()
                if lowered in ("true", "yes", "on", "1"):
                    return True
                if lowered in ("false", "no", "off", "0"):
                    return False
                raise ValueError(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag_name(name)} {text!r} is not a valid {kind}") from None
        return text
    return convert


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(str(item) for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclasses.dataclass
class StageSettings:
    """Base of the settings dataclasses (see the module docstring). Subclasses override `check()`."""

    def __post_init__(self):
        # A list given for a tuple setting (argparse's nargs, JSON) becomes a tuple, so settings compare equal.
        for field in self.settings_fields():
            if isinstance(getattr(self, field.name), list) and isinstance(self.default_of(field.name), tuple):
                setattr(self, field.name, tuple(getattr(self, field.name)))

    @classmethod
    def settings_fields(cls) -> List[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if "help" in f.metadata]

    @classmethod
    def default_of(cls, name: str) -> Any:
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default

    @classmethod
    def notebook_default_of(cls, name: str) -> Any:
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        value = field.metadata.get("notebook_default", _NO_NOTEBOOK_DEFAULT)
        return cls.default_of(name) if value is _NO_NOTEBOOK_DEFAULT else value

    @classmethod
    def help_of(cls, name: str) -> str:
        """The help text with the unit and the default, as the CLI shows it."""
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        meta, default = field.metadata, cls.default_of(name)
        unit = f"{meta['unit']}; " if meta.get("unit") else ""
        return f"{meta['help']} ({unit}default {_default_text(default)})"

    # --- the command line -------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, exclude: Iterable[str] = (),
                      group_title: Optional[str] = None) -> None:
        """One option per setting. Options left out keep argparse.SUPPRESS, so `given(args)` tells what
        the user actually typed (a resumed run keeps its own value for the others)."""
        target = parser.add_argument_group(group_title) if group_title else parser
        skip = set(exclude)
        hints = typing.get_type_hints(cls)
        for field in cls.settings_fields():
            meta = field.metadata
            if not meta["cli"] or field.name in skip:
                continue
            kind, optional, many = _base_type(hints[field.name])
            names = [flag_name(field.name), *meta["aliases"]]
            options: Dict[str, Any] = dict(dest=field.name, default=argparse.SUPPRESS,
                                           help=cls.help_of(field.name).replace("%", "%%"))
            if meta.get("metavar"):
                options["metavar"] = meta["metavar"]
            if kind == "bool" and not optional:
                options["action"] = argparse.BooleanOptionalAction
            else:
                options["type"] = _converter(kind, optional, field.name)
                if many:
                    options["nargs"] = "+"
                if meta.get("choices") is not None:
                    options["choices"] = list(meta["choices"]) + ([None] if optional else [])
            target.add_argument(*names, **options)

    @classmethod
    def given(cls, args: argparse.Namespace) -> Dict[str, Any]:
        """The settings the user typed on the command line (by field name)."""
        names = {f.name for f in cls.settings_fields()}
        return {key: value for key, value in vars(args).items() if key in names}

    @classmethod
    def from_args(cls: Type[T], args: argparse.Namespace, **extra) -> T:
        """The settings of a command: what was typed, the defaults for the rest, checked."""
        return cls(**{**cls.given(args), **extra}).check()

    # --- notebooks and stored JSON -----------------------------------------------------------------
    @classmethod
    def notebook_names(cls) -> List[str]:
        """The parameters a notebook of this stage may declare (upper case)."""
        return [parameter_name(f.name) for f in cls.settings_fields() if f.metadata["notebook"]]

    @classmethod
    def from_parameters(cls: Type[T], parameters: Mapping[str, Any], **extra) -> T:
        """Settings from a notebook's parameters (upper-case names); names of other stages are ignored."""
        by_name = {parameter_name(f.name): f.name for f in cls.settings_fields()}
        values = {by_name[key]: value for key, value in parameters.items() if key in by_name}
        return cls(**{**values, **extra}).check()

    def to_dict(self) -> Dict[str, Any]:
        """The stored form: field name -> value (lists for tuples, so it survives JSON)."""
        out = {}
        for field in self.settings_fields():
            if field.metadata["stored"]:
                value = getattr(self, field.name)
                out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: Type[T], data: Mapping[str, Any], renamed: Optional[Mapping[str, str]] = None) -> T:
        """Settings from a stored dict; unknown keys are ignored, `renamed` maps older stored names."""
        names = {f.name for f in cls.settings_fields()}
        values = {}
        for key, value in data.items():
            key = (renamed or {}).get(key, key)
            if key in names:
                values[key] = value
        return cls(**values)

    def replace(self: T, **changes) -> T:
        return dataclasses.replace(self, **changes).check()

    def check(self: T) -> T:
        """Refuse impossible values with a UserError naming the setting; subclasses extend it."""
        for field in self.settings_fields():
            choices = field.metadata.get("choices")
            value = getattr(self, field.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            if choices is not None and value is not None and any(item not in choices for item in values):
                raise UserError(f"{parameter_name(field.name)} = {value!r} is not one of the choices.",
                                f"Use one of {', '.join(map(str, choices))} ({flag_name(field.name)} on the "
                                "command line).")
        return self

    # --- the docs ----------------------------------------------------------------------------------
    @classmethod
    def markdown_table(cls) -> str:
        """The parameter table of the stage's docs page."""
        rows = ["| notebook parameter | command line | default | unit | what it does |",
                "|---|---|---|---|---|"]
        for field in cls.settings_fields():
            meta = field.metadata
            notebook = f"`{parameter_name(field.name)}`" if meta["notebook"] else "—"
            flag = f"`{flag_name(field.name)}`" if meta["cli"] else "—"
            default = f"`{_default_text(cls.default_of(field.name))}`"
            if meta["notebook"] and cls.notebook_default_of(field.name) != cls.default_of(field.name):
                default += f" (notebooks: `{_default_text(cls.notebook_default_of(field.name))}`)"
            rows.append(f"| {notebook} | {flag} | {default} | {meta.get('unit') or ''} | {meta['help']} |")
        return "\n".join(rows)


# --- values several stages check the same way ----------------------------------------------------------

def check_resolution(resolution, name: str = "RESOLUTION") -> int:
    """A GAN resolution: a power of two from 16 to 1024 px (StyleGAN2 has blocks from 4 x 4 up)."""
    try:
        value = int(str(resolution).strip()) if isinstance(resolution, str) else int(resolution)
        exact = isinstance(resolution, str) or value == resolution  # 256.5 is not 256
    except (TypeError, ValueError):
        value, exact = None, False
    if value is None or not exact or value not in RESOLUTIONS or isinstance(resolution, bool):
        raise UserError(f"{name} = {resolution!r} px is not a power of two between 16 and 1024.",
                        f"Use one of {', '.join(map(str, RESOLUTIONS))} (256 as in the original work; 32 or 64 "
                        "for quick CPU runs).")
    return value


# --- keeping the docs' tables in step --------------------------------------------------------------------

TABLE_START = "<!-- settings table: {name} (made by python -m mura_aug.docs; do not edit by hand) -->"
TABLE_END = "<!-- end of settings table -->"


def replace_table(text: str, name: str, table: str) -> str:
    """`text` with the table between the markers of `name` replaced by `table`; UserError without markers."""
    start, end = TABLE_START.format(name=name), TABLE_END
    if start not in text:
        raise UserError(f"The docs page has no settings table marker for {name}.", f"Add the line {start!r}.")
    head, rest = text.split(start, 1)
    if end not in rest:
        raise UserError(f"The settings table of {name} has no end marker.", f"Add the line {end!r} after it.")
    return f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}"
