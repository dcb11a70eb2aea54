"""python -m train.run --stage=STAGE [flags]: train one stage, or `--stage all` for the whole pipeline.

Errors a user can fix (a bad flag, a missing weight, a malformed jsonl line) print one line and exit with 2.
"""
import argparse
import os
import sys

from train.args import canonical_stage, parser, with_defaults


def config_of(flags: argparse.Namespace):
    """The typed configuration of a namespace for one stage: the stage's defaults under the flags given."""
    from train import stages
    from train.config import TrainConfig
    flags = argparse.Namespace(**{**vars(flags), "stage": canonical_stage(flags.stage, flags.spo_mode)})
    stage = stages.get(flags.stage)
    return stage, TrainConfig.from_flags(with_defaults(flags, stage_defaults(stage, flags.minimind)))


def stage_defaults(stage, generation: int = 2) -> dict:
    """The flags a stage sets when the user does not: the reference's (MiniMind-3's where they differ), and the
    reference's logging cadence (every step for RL, every 100 for the rest)."""
    return {"log_interval": 1 if stage.rollouts else 100, **stage.defaults,
            **(stage.defaults3 if generation == 3 else {})}


def stage_help(argv: list[str]) -> None:
    """`--stage X --help`: the flags with X's defaults filled in (this imports the stage, so JAX: plain --help does
    not)."""
    p = parser()
    known, _ = p.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    from train import stages
    name = canonical_stage(known.stage, known.spo_mode)
    if name == "all":
        p.print_help()
        return
    stage = stages.get(name)
    defaults = stage_defaults(stage, known.minimind)
    p.set_defaults(**{k: v for k, v in defaults.items() if not callable(v)})
    p.description = (f"--stage {name}" + (" (MiniMind-3)" if known.minimind == 3 else "") +
                     f": {(stages.module_doc(name) or '').splitlines()[0]} Defaults below are this stage's." +
                     "".join(f" --{k}: depends on other flags." for k, v in defaults.items() if callable(v)))
    p.print_help()


def enable_compile_cache(where: str) -> None:
    """Keep compiled programs on disk, so a second run of the same shapes starts without compiling (XLA's own
    persistent cache; entries are keyed by the program and the compiler, so a stale one is never used)."""
    if where == "none":
        return
    import jax
    from minimind_jax.data.cache import default_cache_dir
    path = default_cache_dir() / "xla" if where == "auto" else where
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def reference_only_flags(flags: argparse.Namespace) -> None:
    """The reference's flags that have no effect here say so (once, one line each); --device cpu is honoured."""
    if flags.device is not None:
        if flags.device.startswith("cpu"):
            os.environ["JAX_PLATFORMS"] = "cpu"          # before JAX is imported
        else:
            print(f"note: --device {flags.device}: JAX uses every accelerator it sees; choose with "
                  f"CUDA_VISIBLE_DEVICES (or --mesh)", file=sys.stderr)
    if flags.num_workers is not None:
        print(f"note: --num_workers {flags.num_workers}: data is tokenized once into a cache (in its own processes) "
              f"and batches are read from it, so there are no loader workers", file=sys.stderr)
    if flags.use_compile is not None:
        print("note: --use_compile: every step is compiled (jit) here anyway", file=sys.stderr)


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
    if ("-h" in argv or "--help" in argv) and any(a == "--stage" or a.startswith("--stage=") for a in argv):
        stage_help(argv)
        return
    flags = parser().parse_args(argv)
    flags.stage = canonical_stage(flags.stage, flags.spo_mode)
    reference_only_flags(flags)
    enable_compile_cache(flags.compile_cache)
    from minimind_jax.data import DataError
    from train.distributed import initialize
    from train.signals import Interrupted
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
