"""PPO as the reference runs it: sequence-level, one update per rollout, no GAE, KL to the reference in the loss.

Trainable params are {'actor', 'critic'}, each with its own AdamW, clipping and cosine schedule; the old actor
is state, refreshed from the actor every `--update_old_actor_freq` steps (so the ratio is exactly 1 right after a
refresh — expected: the reference behaves the same).
"""
import jax
import jax.numpy as jnp
import optax

import losses
from minimind_jax import MiniMindCritic
from minimind_jax.convert import params_to_torch
from minimind_jax.heads import init_head_params, last_token_index
from train import optim, rng
from train.rollout import policy_logps, rollout_batch
from train.stage import Stage, rl_schedule
from train.stages.common import frozen_copy, rl_start_weight
from train.weights import start_params


def init(run):
    c = run.config
    actor = start_params(c)
    # The critic starts from the actor's backbone but is its own copy: the state's buffers are donated each step.
    critic = frozen_copy(init_head_params(actor, MiniMindCritic(c.model), rng.stream(c.seed, "heads")))
    return {"actor": actor, "critic": critic}, {"ref": frozen_copy(actor)}


def optimizer(run, total_steps, rows):
    """AdamW per model, each clipped on its own global norm and on its own schedule: the reference's two optimizers."""
    o, obj = run.config.optim, run.config.objective
    tx = lambda lr: optim.adamw(optim.rl_schedule(lr, total_steps), o.grad_clip)
    return optax.multi_transform({"actor": tx(o.learning_rate), "critic": tx(obj.critic_learning_rate)},
                                 lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()})


def export(run, params, frozen):
    """The actor, under the reference's names; the critic lives in the checkpoint."""
    return params_to_torch(params["actor"], run.config.model)


def prepare(run, state, frozen, arrays, host, step):
    batch, info = rollout_batch(run, state.params["actor"], frozen, arrays, host, step,
                                old_params=state.extra["old_actor"])
    return batch, info, None


def make_loss(run):
    model, critic, o = run.model, MiniMindCritic(run.config.model, policy=run.model.policy), run.config.objective

    def loss_fn(params, batch, key, frozen, extra):
        logps, aux = policy_logps(model, params["actor"], batch, key)                   # [N, R]
        m = batch["completion_mask"].astype(jnp.float32)
        seq_sum = lambda lp: jnp.sum(lp * m, axis=-1)                                    # [N]
        values = critic.apply({"params": params["critic"]}, batch["sequences"], batch["attention_mask"])  # [N, T]
        last = last_token_index(batch["attention_mask"])                                  # [N]
        value = jnp.take_along_axis(values, last[:, None], axis=1)[:, 0]                 # at the last real token
        total, metrics = losses.ppo_loss(seq_sum(logps), seq_sum(batch["old_logps"]), seq_sum(batch["ref_logps"]),
                                         value, batch["rewards"], o.clip_epsilon, o.vf_coef, o.kl_coef)
        loss = total + aux
        return loss, {"loss": loss, "aux_loss": aux, **metrics}

    return loss_fn


def update_extra(run):
    freq = run.config.objective.update_old_actor_freq

    def update(extra, params, batch, step):
        refresh = (step + 1) % freq == 0
        old = jax.tree.map(lambda new, old: jnp.where(refresh, new, old), params["actor"], extra["old_actor"])
        return {**extra, "old_actor": old}
    return update


STAGE = Stage(
    name="ppo",
    generations=(2,),          # MiniMind-3 has its own RL objectives
    defaults=dict(learning_rate=8e-8, batch_size=2, accumulation_steps=1, max_seq_len=66, max_gen_len=1536,
                  epochs=1, from_weight=rl_start_weight, save_weight="ppo_actor"),
    data_file="rlaif.jsonl",
    dataset="rlaif",
    make_loss=make_loss,
    init=init,
    init_extra=lambda run, params, frozen, dataset: {"old_actor": frozen_copy(params["actor"])},
    schedule=rl_schedule,
    optimizer=optimizer,
    prepare=prepare,
    update_extra=update_extra,
    export=export,
)
