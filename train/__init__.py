"""The trainer: `python -m train.run --stage=STAGE`, or from Python:

    from train import configure, train
    c = configure("pretrain", preset="tiny", max_steps=20, out_dir="out")   # the CLI's flags as keywords
    result = train(c)                    # or train("pretrain", preset="tiny", ...)
    result.metrics[-1]["loss"], result.run_dir

`configure` builds the same validated TrainConfig the CLI builds (the stage's defaults under the flags given); one
engine (engine.py) runs every stage (stages/). Nothing heavy is imported until a function is called.
"""
import dataclasses
from pathlib import Path


@dataclasses.dataclass
class Result:
    run_dir: Path             # weights.safetensors, config.json, metrics.jsonl, checkpoints/
    metrics: list[dict]       # the logged records of this run, in order
    session: object           # the engine's Session: final state, data set, compiled step


def flags(stage: str, **values):
    """The CLI's namespace for `stage` with `values` as flags (names as on the command line, without '--')."""
    from train.args import parser
    p = parser()
    known = {a.dest for a in p._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"unknown flag(s) {', '.join(unknown)}; see python -m train.run --help")
    namespace = p.parse_args(["--stage", stage])
    for k, v in values.items():
        setattr(namespace, k, v)
    return namespace


def configure(stage: str, **values):
    """(Stage, TrainConfig) as `python -m train.run --stage STAGE --k v ...` would build them."""
    from train.run import config_of
    return config_of(flags(stage, **values))


def train(stage_or_config, callback=None, **values) -> Result:
    """Run one stage: `train("pretrain", preset="tiny")`, or `train(configure("pretrain", ...))`. `callback(session,
    step, record)` is called after every step and may return True to stop (see train.engine.StepCallback)."""
    from train.engine import train as run
    from train.metrics import read
    stage, cfg = configure(stage_or_config, **values) if isinstance(stage_or_config, str) else stage_or_config
    session = run(stage, cfg, callback)
    path = session.run.run_dir / "metrics.jsonl"
    return Result(session.run.run_dir, read(path) if path.exists() else [], session)
