"""PPO as the reference runs it: sequence-level, one update per rollout, no GAE, KL to the reference in the loss.

Trainable params are {'actor', 'critic'}, each with its own AdamW, clipping and cosine schedule; the old actor
is state, refreshed from the actor every `--update_old_actor_freq` steps (so the ratio is exactly 1 right after a
refresh — expected: the reference behaves the same).

MiniMind-3 (`--minimind 3`) runs token-level PPO with GAE instead: the rollout's log-probs are the old policy (no
old-actor copy), the critic's values at rollout time give GAE advantages (whitened) and returns, and each rollout
is reused for `--ppo_update_iters` passes over minibatches of `--mini_batch_size` rows, one optimizer update per
minibatch (train.step.make_minibatch_step). Once a minibatch's approx KL to the rollout policy exceeds
`--early_stop_kl` the rollout's remaining updates are skipped: neither the weights nor the optimizer move again.
`--critic_double_norm 1` reproduces the reference critic's doubled final norm.
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

import losses
from minimind_jax import MiniMindCritic
from minimind_jax.convert import params_to_torch
from minimind_jax.heads import init_head_params, last_token_index
from train import optim, rng
from train.errors import UsageError
from train.rollout import policy_logps, rollout_batch
from train.stage import Stage
from train.stages.common import frozen_copy, rl_start_weight
from train.step import make_minibatch_step, make_train_step
from train.weights import start_params


def init(run):
    c = run.config
    if c.model.generation == 3:
        rows, mb = c.optim.global_batch, c.rl3.mini_batch_size
        if mb > rows or rows % mb:
            raise UsageError(f"--mini_batch_size {mb}: must divide the {rows} rollouts of a step (--batch_size x "
                             f"--accumulation_steps)")
    actor = start_params(c)
    # The critic starts from the actor's backbone but is its own copy: the state's buffers are donated each step.
    critic = frozen_copy(init_head_params(actor, MiniMindCritic(c.model), rng.stream(c.seed, "heads")))
    return {"actor": actor, "critic": critic}, {"ref": frozen_copy(actor)}


def total_updates(run, total_steps: int) -> int:
    """Optimizer updates over the run: one per rollout, or at MiniMind-3 one per minibatch of every pass."""
    if run.config.model.generation == 3:
        return total_steps * run.config.rl3.ppo_update_iters * updates_per_pass(run)
    return total_steps


def optimizer(run, total_steps, rows):
    """AdamW per model, each clipped on its own global norm and on its own schedule: the reference's two optimizers."""
    o, obj = run.config.optim, run.config.objective
    total_steps = total_updates(run, total_steps)
    tx = lambda lr: optim.adamw(optim.rl_schedule(lr, total_steps), o.grad_clip)
    return optax.multi_transform({"actor": tx(o.learning_rate), "critic": tx(obj.critic_learning_rate)},
                                 lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()})


def export(run, params, frozen):
    """The actor, under the reference's names; the critic lives in the checkpoint."""
    return params_to_torch(params["actor"], run.config.model)


def prepare(run, state, frozen, arrays, host, step):
    if run.config.model.generation == 3:
        return prepare3(run, state, frozen, arrays, host, step)
    batch, info = rollout_batch(run, state.params["actor"], frozen, arrays, host, step,
                                old_params=state.extra["old_actor"])
    return batch, info, None


def make_loss(run):
    if run.config.model.generation == 3:
        return make_loss3(run)
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
    if run.config.model.generation == 3:
        return None
    freq = run.config.objective.update_old_actor_freq

    def update(extra, params, batch, step):
        refresh = (step + 1) % freq == 0
        old = jax.tree.map(lambda new, old: jnp.where(refresh, new, old), params["actor"], extra["old_actor"])
        return {**extra, "old_actor": old}
    return update


# ---- MiniMind-3: PPO with GAE -----------------------------------------------------------------------------------

def critic3(run) -> MiniMindCritic:
    return MiniMindCritic(run.config.model, policy=run.model.policy, double_norm=run.config.rl3.critic_double_norm)


def updates_per_pass(run) -> int:
    return run.config.optim.global_batch // run.config.rl3.mini_batch_size


@partial(jax.jit, static_argnames=("critic", "gamma", "lam"))
def gae_targets(critic, critic_params, sequences, attention_mask, completion_mask, rewards, *, gamma, lam):
    """(old values, whitened advantages, returns), each [N, R]: the critic's value of the state before each
    response token, masked, and GAE on the reward placed at the last token."""
    R = completion_mask.shape[1]
    m = completion_mask.astype(jnp.float32)
    values = critic.apply({"params": critic_params}, sequences, attention_mask)             # [N, T]
    T = values.shape[1]
    old_values = values[:, T - R - 1:T - 1] * m                                              # [N, R]
    lengths = jnp.sum(completion_mask, axis=-1)            # the sampler's mask runs through the first eos
    advantages, returns = losses.gae(losses.token_rewards(rewards, lengths, m), old_values, gamma, lam)
    return old_values, losses.masked_whiten(advantages, m), returns


def minibatch_rows(seed: int, step: int, rows: int, size: int, passes: int) -> np.ndarray:
    """int [passes * rows / size, size]: each pass a fresh permutation of the rollout's rows, cut into minibatches
    (a function of (seed, step): a resumed run reuses the same order)."""
    gen = np.random.default_rng([seed, step, 0x9907])
    return np.concatenate([gen.permutation(rows) for _ in range(passes)]).reshape(-1, size)


def prepare3(run, state, frozen, arrays, host, step):
    c, r3 = run.config, run.config.rl3
    actor = state.params["actor"]
    batch, info = rollout_batch(run, actor, frozen, arrays, host, step, old_params=actor)
    batch = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)                     # [N, ...]
    old_values, advantages, returns = gae_targets(
        critic3(run), state.params["critic"], batch["sequences"], batch["attention_mask"], batch["completion_mask"],
        batch["rewards"], gamma=r3.gamma, lam=r3.lam)
    batch.update(old_values=old_values, advantages=advantages, returns=returns)     # whitened over the whole step
    order = minibatch_rows(c.seed, step, len(batch["rewards"]), r3.mini_batch_size, r3.ppo_update_iters)
    return {k: v[order] for k, v in batch.items() if k != "index"}, info, None            # [U, mb, ...]


def make_loss3(run):
    model, critic, o, r3 = run.model, critic3(run), run.config.objective, run.config.rl3

    def loss_fn(params, batch, key, frozen, extra):
        logps, aux = policy_logps(model, params["actor"], batch, key)                      # [mb, R]
        R = logps.shape[1]
        values = critic.apply({"params": params["critic"]}, batch["sequences"], batch["attention_mask"])
        T = values.shape[1]
        total, metrics = losses.ppo_gae_loss(
            logps, batch["old_logps"], batch["ref_logps"], values[:, T - R - 1:T - 1], batch["old_values"],
            batch["advantages"], batch["returns"], batch["completion_mask"], clip_eps=r3.epsilon,
            cliprange_value=r3.cliprange_value, vf_coef=o.vf_coef, kl_coef=o.kl_coef)
        loss = total + aux
        stop = (metrics["approx_kl"] > r3.early_stop_kl).astype(jnp.float32)
        return loss, {"loss": loss, "aux_loss": aux, "stop": stop, **metrics}

    return loss_fn


def schedule(run, total_steps, rows):
    """The actor's rate by optimizer update: one per rollout, or at MiniMind-3 one per minibatch."""
    return optim.rl_schedule(run.config.optim.learning_rate, total_updates(run, total_steps))


def updates_made(opt_state):
    """The actor's optimizer updates so far: its schedule's own counter (early-stopped updates do not count)."""
    (count,) = [x for path, x in optax.tree_utils.tree_get_all_with_path(opt_state.inner_states["actor"], "count")
                if getattr(path[-1], "tuple_name", "") == "ScaleByScheduleState"]
    return count


def make_step(run, loss_fn, tx, update_extra, schedule):
    """MiniMind-2: one update per rollout. MiniMind-3: a batch laid out as minibatches gets one update per
    minibatch, and logs the rate its last applied update ran at (it does not follow the rollout step)."""
    if run.config.model.generation == 2:
        return make_train_step(loss_fn, tx, update_extra)
    several = make_minibatch_step(loss_fn, tx, update_extra)

    def step(state, batch, frozen):
        state, metrics = several(state, batch, frozen)
        return state, {**metrics, "lr": schedule(jnp.maximum(updates_made(state.opt_state) - 1, 0))}
    return step


def init_extra(run, params, frozen, dataset):
    return {} if run.config.model.generation == 3 else {"old_actor": frozen_copy(params["actor"])}


STAGE = Stage(
    name="ppo",
    generations=(2, 3),
    defaults=dict(learning_rate=8e-8, batch_size=2, accumulation_steps=1, max_seq_len=66, max_gen_len=1536,
                  epochs=1, from_weight=rl_start_weight, save_weight="ppo_actor"),
    defaults3=dict(learning_rate=3e-7, critic_learning_rate=5e-7, max_seq_len=768, max_gen_len=1024,
                   thinking_ratio=0.9, from_weight="full_sft", clip_epsilon=0.2, rollout_top_k=50, rollout_top_p=0.85),
    data_file="rlaif.jsonl",
    dataset="rlaif",
    make_loss=make_loss,
    init=init,
    init_extra=init_extra,
    schedule=schedule,
    optimizer=optimizer,
    prepare=prepare,
    update_extra=update_extra,
    make_step=make_step,
    export=export,
)
