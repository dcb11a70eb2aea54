"""GRPO: G completions per prompt, group-normalised advantages, `-(ratio * A - beta * KL)` per token.

ratio = exp(logp - stop_grad(logp)) is 1 in value, so the gradient is the policy gradient (one update per
rollout, as the reference).

MiniMind-3 (`--minimind 3`) changes the objective: CISPO by default (`--loss_type cispo`: the capped ratio weighs
every token's log-prob) or the clipped surrogate (`--loss_type grpo`), advantages normalised by the group's
population std only, MiniMind-3's rule reward, and its sampler (top_k 50, top_p 0.85).
"""
import jax
import jax.numpy as jnp

import losses
from train.rollout import rollout_batch
from train.stage import Stage, rl_schedule
from train.stages.common import init_with_reference, kl_regularized_loss, policy_gradient_loss, rl_start_weight


def prepare(run, state, frozen, arrays, host, step):
    if run.config.model.generation == 3:
        return prepare3(run, state, frozen, arrays, host, step)
    G = run.config.rollout.num_generations
    batch, info = rollout_batch(run, state.params, frozen, arrays, host, step, num_generations=G)
    batch["advantages"] = jax.vmap(lambda r: losses.grpo_advantages(r, G))(jnp.asarray(batch["rewards"]))
    return batch, info, None


def prepare3(run, state, frozen, arrays, host, step):
    G = run.config.rollout.num_generations
    batch, info = rollout_batch(run, state.params, frozen, arrays, host, step, num_generations=G)
    batch["advantages"] = jax.vmap(lambda r: losses.group_advantages(r, G))(jnp.asarray(batch["rewards"]))
    return batch, info, None


def make_loss(run):
    """MiniMind-2: the reference's GRPO loss; MiniMind-3: CISPO or the clipped surrogate (--loss_type), the ratio
    against the sampling policy (1 in value here: one update per rollout, as upstream)."""
    if run.config.model.generation == 2:
        return kl_regularized_loss(run, losses.grpo_loss)
    r3, beta = run.config.rl3, run.config.objective.beta

    def objective(logps, batch):
        return losses.group_policy_loss(logps, batch.get("old_logps"), batch["ref_logps"], batch["advantages"],
                                        batch["completion_mask"], beta=beta, loss_type=r3.loss_type,
                                        epsilon=r3.epsilon, epsilon_high=r3.epsilon_high, return_metrics=True)
    return policy_gradient_loss(run, objective)


STAGE = Stage(
    name="grpo",
    generations=(2, 3),
    defaults=dict(learning_rate=8e-8, batch_size=2, accumulation_steps=1, max_seq_len=66, max_gen_len=1536,
                  epochs=1, beta=0.02, from_weight=rl_start_weight, save_weight="grpo"),
    defaults3=dict(learning_rate=3e-7, max_seq_len=768, max_gen_len=1024, beta=0.1, num_generations=6,
                   thinking_ratio=0.9, from_weight="full_sft", loss_type="cispo", rollout_top_k=50, rollout_top_p=0.85),
    data_file="rlaif.jsonl",
    dataset="rlaif",
    make_loss=make_loss,
    init=init_with_reference,
    schedule=rl_schedule,
    prepare=prepare,
)
