"""`pneumo-train` / `train.py`: train one model per fold (folds in parallel) and evaluate the ensemble."""

from __future__ import annotations

import sys

from pneumo.config import parse_args, validate
from pneumo.run_config import RunConfig
from pneumo.runner import EXIT_STOPPED, run_training
from pneumo.training.preempt import StopFlag, requeue_if_asked
from pneumo.utils.errors import PneumoError


def main(argv: list[str] | None = None) -> int:
    """Run the training CLI; returns the exit status (2: bad input, 75: stopped with state saved)."""
    try:
        args = parse_args(argv)
        validate(args)
        stop = StopFlag().install()
        status = run_training(RunConfig.from_config(vars(args)), stop)
    except PneumoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if status == EXIT_STOPPED:
        requeue_if_asked(stop)
    return status


if __name__ == "__main__":
    sys.exit(main())
