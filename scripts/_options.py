"""The options a training run changed, for the reproduce command in its model card."""

from __future__ import annotations

import argparse


def changed_options(parser: argparse.ArgumentParser, args: argparse.Namespace, skip=(), placeholders=None) -> str:
    """`` --name value`` for every option of ``parser`` whose value in ``args`` differs from its
    default, except those in ``skip`` (the ones the command names itself, or machine paths).
    ``placeholders`` maps an option to the text shown instead of its value (e.g. ``BASE``)."""
    placeholders = placeholders or {}
    out = []
    for action in parser._actions:
        name = action.dest
        if not action.option_strings or name in skip or name == "help":
            continue
        value = getattr(args, name, action.default)
        if value == action.default:
            continue
        value = placeholders.get(name, value)
        text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}" \
            if isinstance(value, float) else str(value)
        out.append(f" {action.option_strings[-1]} {text}")
    return "".join(out)
