"""GRPO: G completions per prompt, group-normalised advantages, `-(ratio * A - beta * KL)` per token.

ratio = exp(logp - stop_grad(logp)) is 1 in value, so the gradient is the policy gradient (one update per
rollout, as the reference).
"""
import jax
import jax.numpy as jnp

import losses
from train.rollout import rollout_batch
from train.stage import Stage, rl_schedule
from train.stages.common import init_with_reference, policy_gradient_loss, rl_start_weight


def prepare(run, state, frozen, arrays, host, step):
    G = run.config.rollout.num_generations
    batch, info = rollout_batch(run, state.params, frozen, arrays, host, step, num_generations=G)
    batch["advantages"] = jax.vmap(lambda r: losses.grpo_advantages(r, G))(jnp.asarray(batch["rewards"]))
    return batch, info, None


def make_loss(run):
    o = run.config.objective

    def objective(logps, batch):
        return losses.grpo_loss(logps, batch["ref_logps"], batch["advantages"], batch["completion_mask"], o.beta,
                                kl_estimator=o.kl_estimator, return_metrics=True)
    return policy_gradient_loss(run, objective)


STAGE = Stage(
    name="grpo",
    generations=(2,),          # MiniMind-3 has its own RL objectives
    defaults=dict(learning_rate=8e-8, batch_size=2, accumulation_steps=1, max_seq_len=66, max_gen_len=1536,
                  epochs=1, beta=0.02, from_weight=rl_start_weight, save_weight="grpo"),
    data_file="rlaif.jsonl",
    dataset="rlaif",
    make_loss=make_loss,
    init=init_with_reference,
    schedule=rl_schedule,
    prepare=prepare,
)
