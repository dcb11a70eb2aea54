"""What the console says around a run: what runs (model, size, data, steps, where it writes), a warning when the data
gives fewer steps than asked, and the configuration as flat scalars for trackers."""
import dataclasses

from minimind_jax import count_params
from train.config import TrainConfig
from train.resume import resolve_dtype


def config_record(config: TrainConfig) -> dict:
    """The configuration as flat JSON-able scalars ('optim.learning_rate': 5e-4), for trackers such as wandb."""
    flat = {}
    for section, value in dataclasses.asdict(config).items():
        for k, v in (value.items() if isinstance(value, dict) else [("", value)]):
            if isinstance(v, (int, float, str, bool)):
                flat[f"{section}.{k}" if k else section] = v
    return flat


def start_message(s, start: int) -> str:
    """The lines printed as a session (engine.Session) starts at step `start`."""
    c, o = s.run.config, s.run.config.optim
    n = count_params(s.state.params)
    lines = [f"{s.stage.name}: {c.model.hidden_size}x{c.model.num_hidden_layers}{' MoE' if c.model.use_moe else ''}, "
             f"{n / 1e6:.2f}M trainable params, {resolve_dtype(o.dtype)}, {len(s.dataset):,} rows of {s.run.data_path}",
             f"  {s.stop - start} steps ({start} -> {s.stop} of {s.total_steps}: {o.epochs} epoch(s) x "
             f"{s.steps_per_epoch}), batch {o.batch_size} x accumulation {o.accumulation_steps}, lr {o.learning_rate:g}, "
             f"seq {c.data.max_seq_len}, seed {c.seed}, mesh {dict(s.run.mesh.shape)}",
             f"  writing to {s.run.run_dir}"]
    return "\n".join(lines)


def short_data_warning(s) -> str | None:
    """A data set that gives fewer optimizer steps than the user seems to expect deserves a word."""
    o = s.run.config.optim
    if o.max_steps and s.total_steps < o.max_steps:
        return (f"warning: --max_steps {o.max_steps} but {len(s.dataset)} rows at {o.global_batch} per step x "
                f"{o.epochs} epoch(s) give only {s.total_steps} steps (raise --epochs, or lower --batch_size / "
                f"--accumulation_steps)")
    if s.steps_per_epoch == 1 and len(s.dataset) < o.global_batch:
        return (f"warning: {len(s.dataset)} rows < {o.global_batch} per step (batch {o.batch_size} x accumulation "
                f"{o.accumulation_steps}): each epoch is one step that repeats rows")
    return None
