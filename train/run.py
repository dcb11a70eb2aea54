"""python -m train.run --stage=STAGE [flags]: train one stage, or `--stage all` for the whole pipeline.

Errors a user can fix (a bad flag, a missing weight, a malformed jsonl line) print one line and exit with 2.
"""
import sys

from train.args import PIPELINE, canonical_stage, parser, with_defaults
from train.stage import UsageError
from train import stages


def init_distributed(args) -> None:
    """Multi-host through JAX's own runtime: explicit flags, or auto-detection (SLURM, TPU pods) when JAX offers it."""
    import jax
    if args.coordinator_address or args.num_processes:
        jax.distributed.initialize(args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id)


def run_stage(name: str, args):
    from train.engine import train
    stage = stages.get(name)
    return train(stage, with_defaults(args, {**stage.defaults, "stage": name}))


def run_pipeline(args) -> None:
    """Every stage in the reference's order, each starting from the weights the previous one saved.

    The pipeline trains one model size, so distillation's teacher is the full_sft model of that size.
    """
    for name in [n for n in PIPELINE if n in stages.available()]:
        print(f"\n=== {name} ===", flush=True)
        stage_args = with_defaults(args, {})
        stage_args.stage = name
        if name == "distillation":
            from train.engine import model_config
            cfg = model_config(args)
            stage_args.teacher_hidden_size = args.teacher_hidden_size or cfg.hidden_size
            stage_args.teacher_num_layers = args.teacher_num_layers or cfg.num_hidden_layers
        run_stage(name, stage_args)


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    args.stage = canonical_stage(args.stage)
    if args.stage not in ("all", *stages.available()):
        sys.exit(f"error: --stage {args.stage} is not implemented yet")
    from minimind_jax.data import DataError
    try:
        init_distributed(args)
        if args.stage == "all":
            run_pipeline(args)
        else:
            run_stage(args.stage, args)
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
