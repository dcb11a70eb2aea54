"""The whole mutable state of a run as one pytree: what a checkpoint holds and what the jitted step donates."""
from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array       # int32 []   optimizer steps taken
    params: Any           # the trainable pytree (LoRA: only the adapters; PPO: {'actor', 'critic'})
    opt_state: Any
    rng: jax.Array        # uint32 [2] raw key of the "train" stream, split once per step: plain arrays checkpoint
                          # everywhere
    extra: dict           # the stage's own state: SPO tracker, PPO old actor, fp16 loss scale, ...
    nonfinite_streak: jax.Array   # int32 []  consecutive steps not applied because loss or gradients were not finite
    nonfinite_total: jax.Array    # int32 []  all such steps of the run

    @classmethod
    def create(cls, params, tx, key: jax.Array, extra: dict | None = None) -> "TrainState":
        zero = lambda: jnp.zeros((), jnp.int32)        # one buffer each: the step donates every leaf
        return cls(step=zero(), params=params, opt_state=tx.init(params), rng=key, extra=extra or {},
                   nonfinite_streak=zero(), nonfinite_total=zero())


@flax.struct.dataclass
class LossScale:
    """Dynamic loss scaling for fp16: halve on overflow (and skip the update), double after `period` good steps."""
    scale: jax.Array        # f32 []
    good_steps: jax.Array   # int32 []
    period: int = flax.struct.field(pytree_node=False, default=2000)

    @classmethod
    def create(cls, init_scale: float = 2.0**15) -> "LossScale":
        return cls(jnp.asarray(init_scale, jnp.float32), jnp.zeros((), jnp.int32))

    def adjust(self, finite: jax.Array) -> "LossScale":
        grow = self.good_steps + 1 >= self.period
        scale = jnp.where(finite, jnp.where(grow, self.scale * 2, self.scale), jnp.maximum(self.scale / 2, 1.0))
        return self.replace(scale=scale, good_steps=jnp.where(finite & ~grow, self.good_steps + 1, 0))
