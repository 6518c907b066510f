"""Command line: `python -m sft train|evaluate|compare|tiny-model`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request drowns the evaluation's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _train(args: argparse.Namespace) -> int:
    from sft.config import load_recipe
    from sft.train import train

    overrides = list(args.set)
    if args.loss_weighting is not None:
        overrides.append(f"training.loss_weighting={args.loss_weighting}")
    recipe = load_recipe(args.config, overrides)
    result = train(recipe)
    if result.final_dir is not None:
        print(result.final_dir)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from sft.eval.run import evaluate_from_args

    return evaluate_from_args(args)


def _compare(args: argparse.Namespace) -> int:
    from sft.eval.results import compare_files

    table = compare_files(args.results, baseline_index=0)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(table)
    print(table, end="")
    return 0


def _tiny(args: argparse.Namespace) -> int:
    from sft.tiny import save_tiny_model

    print(save_tiny_model(args.out, args.tokenizer, args.arch, args.hidden_size, args.layers))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sft.config import LOSS_WEIGHTINGS
    from sft.eval.run import add_evaluate_arguments
    from sft.tiny import TOKENIZER_KINDS

    parser = argparse.ArgumentParser(prog="python -m sft", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a model from a YAML recipe")
    train.add_argument("--config", required=True, help="recipe YAML (see sft/recipes/)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a recipe value, e.g. --set training.max_steps=4 (repeatable)",
    )
    train.add_argument(
        "--loss-weighting",
        choices=LOSS_WEIGHTINGS,
        help="token: mean over a step's target tokens (default); sequence: mean of "
        "per-sequence token means, as the reference weighted them",
    )
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="HumanEval / MBPP pass@1 in the sandbox")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=_evaluate)

    compare = sub.add_parser("compare", help="table of results files (first is the baseline)")
    compare.add_argument("results", nargs="+", help="results JSON files from `evaluate`")
    compare.add_argument("--out", help="also write the table to this file")
    compare.set_defaults(func=_compare)

    tiny = sub.add_parser("tiny-model", help="save a tiny random model for smoke runs")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--tokenizer", default="byte-bpe", choices=TOKENIZER_KINDS)
    tiny.add_argument("--arch", default="llama", choices=("llama", "qwen2"))
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.set_defaults(func=_tiny)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    sys.exit(args.func(args))
