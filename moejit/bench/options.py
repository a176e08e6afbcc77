"""Click helpers shared by the benchmark commands: options that take several values after one flag, the way the
seed's argparse ``nargs="+"`` options do (``--models a b --tp-sizes 1 8``), and case-insensitive booleans."""

from __future__ import annotations

import click


class MultiOption(click.Option):
    """A ``multiple=True`` option that also takes every following non-option token: ``--tp-sizes 1 8`` equals
    ``--tp-sizes 1 --tp-sizes 8``. Repeating the flag appends. Use it inside a :class:`MultiValueCommand`."""

    def __init__(self, *args, **kwargs):
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)


def _is_value(token: str) -> bool:
    """A token that is a value, not the next option (negative numbers count as values)."""
    if not token.startswith("-") or token == "-":
        return True
    try:
        float(token)
        return True
    except ValueError:
        return False


class MultiValueCommand(click.Command):
    """A command whose :class:`MultiOption` options take several values after one flag."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names = {opt for p in self.params if isinstance(p, MultiOption) for opt in p.opts}
        out: list[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--":
                out.extend(args[i:])
                break
            if token in names:
                j = i + 1
                values = []
                while j < len(args) and _is_value(args[j]):
                    values.append(args[j])
                    j += 1
                if not values:
                    out.append(token)  # click reports the missing value
                for v in values:
                    out.extend([token, v])
                i = j
                continue
            out.append(token)
            i += 1
        return super().parse_args(ctx, out)


class BoolWord(click.ParamType):
    """``true/false`` (also ``1/0``, ``yes/no``, ``on/off``), any case."""

    name = "bool"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "y", "on", "t"):
            return True
        if text in ("false", "0", "no", "n", "off", "f"):
            return False
        self.fail(f"{value!r} is not a boolean (use true or false)", param, ctx)


BOOL = BoolWord()


def positive_ints(ctx, param, values):
    """Callback: every value must be a positive integer (batch sizes, TP sizes, limits)."""
    for v in values:
        if v <= 0:
            raise click.BadParameter(f"{v} is not positive", ctx=ctx, param=param)
    return tuple(dict.fromkeys(values))
