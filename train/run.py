"""python -m train.run --stage=STAGE [flags]: train one stage, or `--stage all` for the whole pipeline.

Errors a user can fix (a bad flag, a missing weight, a malformed jsonl line) print one line and exit with 2.
"""
import argparse
import sys

from train.args import canonical_stage, parser, with_defaults


def config_of(flags: argparse.Namespace):
    """The typed configuration of a namespace for one stage: the stage's defaults under the flags given."""
    from train import stages
    from train.config import TrainConfig
    flags = argparse.Namespace(**{**vars(flags), "stage": canonical_stage(flags.stage, flags.spo_mode)})
    stage = stages.get(flags.stage)
    defaults = {**stage.defaults, **stage.defaults3} if flags.minimind == 3 else stage.defaults
    return stage, TrainConfig.from_flags(with_defaults(flags, defaults))


def run_stage(flags: argparse.Namespace, callback=None):
    from train.engine import train
    stage, config = config_of(flags)
    return train(stage, config, callback)


def run_pipeline(flags: argparse.Namespace, given: set[str]) -> None:
    from train.pipeline import stage_plan
    for name, overrides in stage_plan(flags, given):
        print(f"\n=== {name} ===", flush=True)
        run_stage(argparse.Namespace(**{**vars(flags), **overrides, "stage": name}))


def explicit_flags(argv) -> set[str]:
    """The flags the user typed (`--batch_size 8` or `--batch_size=8`), which the tiny pipeline must not override."""
    return {a[2:].split("=")[0] for a in argv if a.startswith("--")}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = parser().parse_args(argv)
    flags.stage = canonical_stage(flags.stage, flags.spo_mode)
    from minimind_jax.data import DataError
    from train.distributed import initialize
    from train.engine import Interrupted
    from train.errors import UsageError
    try:
        initialize(flags.coordinator_address, flags.num_processes, flags.process_id,   # before any device is touched
                   timeout=flags.distributed_timeout, bind_address=flags.coordinator_bind_address)
        if flags.stage == "all":
            run_pipeline(flags, explicit_flags(argv))
        else:
            run_stage(flags)
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    main()
