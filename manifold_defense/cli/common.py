"""What every command shares: one-line errors, argument types that refuse bad values, checks that run
before any work starts (device, output locations, which model goes where), and flags a preset ignores."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from manifold_defense.validation import InputError

__all__ = ["Parser", "HelpFormatter", "positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "add_device", "check_device", "check_output_dir", "check_output_file", "load_role", "refuse_unused"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that states every default: ``(default: X)`` is appended unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # identity, not ==: a default of 0 (== False) is a value the help must state
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2 (no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"manifold-defense: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _number(kind: Callable[[str], Any], test: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {what}"
    parse.__doc__ = f"Parse a {kind.__name__} that must be {what} (an argparse type)."
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "> 0")
non_negative_float = _number(float, lambda v: v >= 0, ">= 0")


def add_device(p: argparse.ArgumentParser) -> None:
    """The ``--device`` option of every command that computes."""
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, or auto (CUDA when available)")


def check_device(name: str) -> torch.device:
    """A usable torch device, or an ``InputError`` saying why not (no GPU, a bad name)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a torch device (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise InputError(f"--device {name}: only cpu and cuda are supported")
    return device


def _writable(folder: Path) -> bool:
    """Can a file be created in ``folder``? (A real probe: permission bits do not bind root, read-only mounts do.)"""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output folder that exists and is writable, or can be created in an existing writable parent (it
    is not created here: nothing is written before the work starts)."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(f"{flag} {p} exists and is not a folder")
        if not _writable(p):
            raise InputError(f"{flag} {p} is not writable")
        return p
    _check_parent(p, flag)
    return p


def _check_parent(p: Path, flag: str) -> None:
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{flag} {p}: the folder {parent} does not exist")
    if not _writable(parent):
        raise InputError(f"{flag} {p}: the folder {parent} is not writable")


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output file whose folder exists and is writable (and which is not itself a folder)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{flag} {p} is a folder; give a file path")
    _check_parent(p, flag)
    return p


def load_role(spec: str, role: str, device: torch.device | str, flag: str | None = None) -> nn.Module:
    """Load a zoo name or a checkpoint path as a ``role`` ('classifier' or 'generator'), refusing a model of the
    other kind (the classic mistake: ``--classifier`` and ``--generator`` swapped)."""
    from manifold_defense import models, zoo
    from manifold_defense.protocols import ClassConditional, Generator

    flag = flag or f"--{role}"
    other = "generator" if role == "classifier" else "classifier"
    swap = f" (swapped --{role} and --{other}?)" if flag == f"--{role}" else ""
    if spec in zoo.names():
        kind = zoo.ENTRIES[spec].kind
        if kind != role:
            raise InputError(f"{flag} {spec} is a {kind} in the zoo, not a {role}{swap}")
        return zoo.get(spec, device)
    if not Path(spec).is_file():
        raise InputError(f"{flag} {spec!r} is neither a checkpoint file nor a zoo model ({', '.join(zoo.names())})")
    model = models.load_model(spec, device)
    is_generator = isinstance(model, (Generator, ClassConditional))
    if role == "generator" and not is_generator:
        raise InputError(f"{flag} {spec} holds a {type(model).__name__}, not a generator{swap}")
    if role == "classifier" and (is_generator or not hasattr(model, "input_shape")):
        raise InputError(f"{flag} {spec} holds a {type(model).__name__}, not a classifier{swap}")
    return model


def refuse_unused(args: argparse.Namespace, used: set[str], flags: Mapping[str, str], because: str) -> None:
    """Refuse flags the chosen preset or method ignores: each dest in ``flags`` (dest → '--flag') that was given
    (is not None) and is not in ``used`` is an error, rather than a silently dropped setting."""
    given = sorted(flag for dest, flag in flags.items() if getattr(args, dest, None) is not None and dest not in used)
    if given:
        raise InputError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not used by {because}")
