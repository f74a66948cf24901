"""The ``pvt-np`` command (also ``python -m pvt_np``): one sub-command per job.

Each sub-command is a module of this package (``train``, ``evaluate``, ``predict``, ``convert``, ``flops``,
``bench``) holding its argparse and ``run(args) -> int``, which calls the library; this file only wires them up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help). A command's module is imported by name, so each loads only what it drives.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("pvt_np.cli.train", "train a PVT v2 on CIFAR-10/100 or an image folder"),
    "evaluate": ("pvt_np.cli.evaluate", "evaluate a checkpoint on a test set"),
    "predict": ("pvt_np.cli.predict", "classify images (top-k classes) or segment them (masks) with a trained model"),
    "convert": ("pvt_np.cli.convert", "convert a checkpoint between pvt_np (.npz), timm and the official PVT layout"),
    "flops": ("pvt_np.cli.flops", "print params and FLOPs per layer, per stage and in total"),
    "bench": ("pvt_np.cli.bench", "time pvt_np against PyTorch on this machine (speed and memory)"),
}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvt-np", description="PVT v2 in NumPy/CuPy with hand-written backward passes"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
