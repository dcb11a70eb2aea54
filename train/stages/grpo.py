"""GRPO: G completions per prompt, group-normalised advantages, `-(ratio * A - beta * KL)` per token.

ratio = exp(logp - stop_grad(logp)) is 1 in value, so the gradient is the policy gradient (one update per
rollout, as the reference).
"""
import jax
import jax.numpy as jnp

import losses
from minimind_jax.data import RLAIFDataset
from train.rl import rollout_batch
from train.rollout import policy_logps
from train.stage import Stage, load_or_init, rl_schedule


def init(run, rng):
    params = load_or_init(run, rng)
    return params, {"ref": jax.tree.map(jnp.copy, params)}


def prepare(run, state, frozen, arrays, host, step):
    G = run.args.num_generations
    batch, info = rollout_batch(run, state.params, frozen, arrays, host, step, num_generations=G)
    batch["advantages"] = jax.vmap(lambda r: losses.grpo_advantages(r, G))(jnp.asarray(batch["rewards"]))
    return batch, info


def make_loss(run):
    model, a = run.model, run.args

    def loss_fn(params, batch, rng, frozen, extra):
        logps, aux = policy_logps(model, params, batch, rng)                             # [N, R]
        pg, metrics = losses.grpo_loss(logps, batch["ref_logps"], batch["advantages"], batch["completion_mask"],
                                       a.beta, kl_estimator=a.kl_estimator, return_metrics=True)
        loss = pg + aux
        return loss, {"loss": loss, "policy_loss": pg, "aux_loss": aux, **metrics}

    return loss_fn


STAGE = Stage(
    name="grpo",
    defaults=dict(learning_rate=8e-8, batch_size=2, accumulation_steps=1, max_seq_len=66, max_gen_len=1536,
                  epochs=1, beta=0.02, from_weight=lambda a: "reason" if a.reasoning else "full_sft",
                  save_weight="grpo"),
    data_file="rlaif.jsonl",
    dataset=RLAIFDataset,
    make_loss=make_loss,
    init=init,
    schedule=rl_schedule,
    prepare=prepare,
)
