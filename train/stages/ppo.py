"""PPO as the reference runs it: sequence-level, one update per rollout, no GAE, KL to the reference in the loss.

Trainable params are {'actor', 'critic'}, each with its own AdamW, clipping and cosine schedule; the old actor
is state, refreshed from the actor every `--update_old_actor_freq` steps (so the ratio is exactly 1 right after a
refresh — expected, SPEC.md §7).
"""
import jax
import jax.numpy as jnp
import optax

import losses
from minimind_jax import MiniMindCritic
from minimind_jax.convert import params_to_torch
from minimind_jax.data import RLAIFDataset
from minimind_jax.heads import init_head_params, last_token_index
from train import optim
from train.rl import rollout_batch
from train.rollout import policy_logps
from train.stage import Stage, load_or_init, rl_schedule


def init(run, rng):
    actor = load_or_init(run, rng)
    # The critic starts from the actor's backbone but is its own copy: the state's buffers are donated each step.
    critic = jax.tree.map(jnp.copy, init_head_params(actor, MiniMindCritic(run.cfg), rng))
    return {"actor": actor, "critic": critic}, {"ref": jax.tree.map(jnp.copy, actor)}


def optimizer(run, total_steps):
    """AdamW per model, each clipped on its own global norm and on its own schedule: the reference's two optimizers."""
    a = run.args
    tx = lambda lr: optim.adamw(optim.rl_schedule(lr, total_steps), a.grad_clip)
    return optax.multi_transform({"actor": tx(a.learning_rate), "critic": tx(a.critic_learning_rate)},
                                 lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()})


def export(run, params, frozen):
    """The actor, under the reference's names; the critic lives in the checkpoint."""
    return params_to_torch(params["actor"], run.cfg)


def prepare(run, state, frozen, arrays, host, step):
    return rollout_batch(run, state.params["actor"], frozen, arrays, host, step,
                         old_params=state.extra["old_actor"])


def make_loss(run):
    model, critic, a = run.model, MiniMindCritic(run.cfg, policy=run.model.policy), run.args

    def loss_fn(params, batch, rng, frozen, extra):
        logps, aux = policy_logps(model, params["actor"], batch, rng)                   # [N, R]
        m = batch["completion_mask"].astype(jnp.float32)
        seq_sum = lambda lp: jnp.sum(lp * m, axis=-1)                                    # [N]
        values = critic.apply({"params": params["critic"]}, batch["sequences"], batch["attention_mask"])  # [N, T]
        last = last_token_index(batch["attention_mask"])                                  # [N]
        value = jnp.take_along_axis(values, last[:, None], axis=1)[:, 0]                 # at the last real token
        total, metrics = losses.ppo_loss(seq_sum(logps), seq_sum(batch["old_logps"]), seq_sum(batch["ref_logps"]),
                                         value, batch["rewards"], a.clip_epsilon, a.vf_coef, a.kl_coef)
        loss = total + aux
        return loss, {"loss": loss, "aux_loss": aux, **metrics}

    return loss_fn


def update_extra(run):
    freq = run.args.update_old_actor_freq

    def update(extra, params, batch, step):
        refresh = (step + 1) % freq == 0
        old = jax.tree.map(lambda new, old: jnp.where(refresh, new, old), params["actor"], extra["old_actor"])
        return {**extra, "old_actor": old}
    return update


STAGE = Stage(
    name="ppo",
    defaults=dict(learning_rate=8e-8, batch_size=2, accumulation_steps=1, max_seq_len=66, max_gen_len=1536,
                  epochs=1, from_weight=lambda a: "reason" if a.reasoning else "full_sft", save_weight="ppo_actor"),
    data_file="rlaif.jsonl",
    dataset=RLAIFDataset,
    make_loss=make_loss,
    init=init,
    init_extra=lambda run, params, frozen: {"old_actor": jax.tree.map(jnp.copy, params["actor"])},
    schedule=rl_schedule,
    optimizer=optimizer,
    prepare=prepare,
    update_extra=update_extra,
    export=export,
)
