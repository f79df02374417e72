"""`sam-mmseg` command. Each subcommand lives in its own module, imported only when used, and
exposes `configure_parser(parser)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sam_mmseg_ros.contracts import BadFileError

EXIT_BAD_FILE = 2
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sam_mmseg_ros.demo", "generate a bag, run the node on it over DDS, write a report"),
    "train": ("sam_mmseg_ros.train_command", "train the MoE-LoRA experts, router and heads"),
    "export": ("sam_mmseg_ros.engine.export", "export a checkpoint to ONNX (fp32 or fp16)"),
    "build-engine": ("sam_mmseg_ros.engine.build", "build (only) a TensorRT engine from ONNX"),
    "eval": ("sam_mmseg_ros.evaluate", "evaluate on a bag or DELIVER folder, write reports"),
    "continual-report": ("sam_mmseg_ros.eval.continual", "accuracy matrix, forgetting and selector accuracy of "
                         "train --continual runs"),
    "paired-eval": ("sam_mmseg_ros.eval.paired", "the same synthetic streets under every condition: fusion targets"),
    "replay": ("sam_mmseg_ros.ros.replay", "publish a rosbag2 over DDS with its timing and /clock"),
    "make-bag": ("sam_mmseg_ros.data.bags", "write synthetic or DELIVER sequences to a rosbag2"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sam-mmseg", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen subcommand's module is imported: `sam-mmseg replay` must not load torch.
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(module_name).configure_parser(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)
    except BadFileError as exc:  # a file the user named is unusable: say which and why, no traceback
        logging.getLogger("sam_mmseg_ros").error("%s", exc)
        return EXIT_BAD_FILE


if __name__ == "__main__":
    sys.exit(main())
