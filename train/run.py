"""python -m train.run --stage=STAGE [flags]: train one stage, or `--stage all` for the whole pipeline.

Errors a user can fix (a bad flag, a missing weight, a malformed jsonl line) print one line and exit with 2.
"""
import argparse
import sys

from train.args import canonical_stage, parser, with_defaults
from train.pipeline import stage_plan
from train.stage import UsageError
from train import stages


def init_distributed(args) -> None:
    """Multi-host through JAX's own runtime: explicit flags, or auto-detection (SLURM, Open MPI, TPU pods) when JAX
    offers it. Before anything touches a device."""
    from train.distributed import initialize
    initialize(args.coordinator_address, args.num_processes, args.process_id)


def run_stage(name: str, args):
    from train.engine import train
    stage = stages.get(name)
    return train(stage, with_defaults(args, {**stage.defaults, "stage": name}))


def run_pipeline(args, given: set[str]) -> None:
    for name, overrides in stage_plan(args, given):
        print(f"\n=== {name} ===", flush=True)
        stage_args = argparse.Namespace(**{**vars(args), **overrides, "stage": name})
        run_stage(name, stage_args)


def explicit_flags(argv) -> set[str]:
    """The flags the user typed (`--batch_size 8` or `--batch_size=8`), which the tiny pipeline must not override."""
    return {a[2:].split("=")[0] for a in argv if a.startswith("--")}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.stage = canonical_stage(args.stage)
    if args.stage not in ("all", *stages.available()):
        sys.exit(f"error: --stage {args.stage} is not implemented yet")
    from minimind_jax.data import DataError
    try:
        init_distributed(args)
        if args.stage == "all":
            run_pipeline(args, explicit_flags(argv))
        else:
            run_stage(args.stage, args)
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
