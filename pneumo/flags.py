"""Flag parsing: an argparse parser whose every mistake is one `FlagError`, and value types that
check ranges and names.

A flag's own checks live in its `type=` and `choices=`, nowhere else: the command line and
`--config` files (pneumo.config) both go through the parser, so a value is checked the same
way wherever it comes from, and a flag added later is checked both ways without more code.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from pneumo.utils.errors import PneumoError


class FlagError(PneumoError):
    """A bad flag value: `option` ('--epochs', or None when no single flag is to blame) and `problem`."""

    def __init__(self, option: str | None, problem: str) -> None:
        super().__init__(f"{option}: {problem}" if option else problem)
        self.option, self.problem = option, problem


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a mistake raises FlagError (one `error:` line in the CLIs) instead of
    printing usage and exiting. Flags are never abbreviated: a typo such as `--epoch 3` is an
    error, not a silent `--epochs 3`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(exit_on_error=False, allow_abbrev=False, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        try:
            return super().parse_known_args(args, namespace)
        except argparse.ArgumentError as err:
            raise FlagError(err.argument_name, err.message) from None

    def error(self, message: str) -> NoReturn:
        raise FlagError(None, f"{message}; see {self.prog} --help")


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """The interval a value must lie in, in words."""
    show = lambda x: f"{x:g}" if isinstance(x, float) else str(x)
    if low is not None and high is not None:
        return f"must be in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"must be {'greater than' if low_open else 'at least'} {show(low)}"
    return f"must be {'less than' if high_open else 'at most'} {show(high)}"


def integer(low: int | None = None, high: int | None = None, note: str = "") -> Callable[[str], int]:
    """An int flag type: refuses non-integers ('2.5', 'ten') and values outside [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{_bounds(low, high, False, False)}{note}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """A float flag type: refuses non-numbers, NaN, infinities and values outside the interval
    (closed unless `low_open`/`high_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"{_bounds(low, high, low_open, high_open)}, got {value:g}")
        return value

    parse.__name__ = "float"
    return parse


def existing_file(text: str) -> str:
    """A path flag type for a file that must exist (kept as the string given)."""
    if not Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def timm_model(name: str) -> str:
    """A model-name flag type: any name timm can create."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else "; see timm.list_models()"
        raise argparse.ArgumentTypeError(f"{name}: not a timm model{hint}")
    return name


def timm_optimizer(name: str) -> str:
    """An optimizer-name flag type: a name timm's `create_optimizer_v2` knows."""
    from timm.optim import get_optimizer_info

    base = name.lower().split("_")[-1]  # as timm parses it: "lookahead_adamw" -> adamw
    try:
        get_optimizer_info(base)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: not a timm optimizer; see timm.optim.list_optimizers()") from None
    return name


def threshold_policy(text: str) -> str:
    """An operating-point policy flag type (pneumo.metrics.threshold.parse_policy), kept as written."""
    from pneumo.metrics.threshold import parse_policy

    try:
        parse_policy(text, option="")
    except PneumoError as exc:
        raise argparse.ArgumentTypeError(str(exc).lstrip(" :")) from None
    return text
