"""Reward model: the MiniMind backbone with a scalar head, trained with the Bradley–Terry loss on preference
pairs (the DPO jsonl): `-log sigmoid(score(chosen) - score(rejected))`.

Every tenth pair is held out; after training, the pairwise accuracy on them goes to eval.json. The saved weights
are the backbone under the reference's names plus `score_head.weight` / `score_head.bias`; RL stages load them
with `--reward_model reward`.
"""
import jax
import jax.numpy as jnp
import numpy as np

import losses
from minimind_jax import MiniMindRewardModel
from minimind_jax.convert import params_to_torch
from minimind_jax.data import open_dataset
from minimind_jax.heads import head_to_torch, init_head_params
from train import rng
from train.batches import held_out_split
from train.stage import Stage
from train.weights import start_params

HEAD = MiniMindRewardModel.head_name


def init(run):
    c = run.config
    return init_head_params(start_params(c), MiniMindRewardModel(c.model), rng.stream(c.seed, "heads")), {}


def pair_scores(model, params, batch):
    """(chosen, rejected) scores [B] each, from one forward over [chosen; rejected]."""
    ids = jnp.concatenate([batch["chosen_input_ids"], batch["rejected_input_ids"]])      # [2B, T]
    scores = model.apply({"params": params}, ids, (ids != 0).astype(jnp.int32))           # [2B]
    B = ids.shape[0] // 2
    return scores[:B], scores[B:]


def make_loss(run):
    model = MiniMindRewardModel(run.config.model, policy=run.model.policy)

    def loss_fn(params, batch, key, frozen, extra):
        chosen, rejected = pair_scores(model, params, batch)
        loss, metrics = losses.bradley_terry_loss(chosen, rejected)
        return loss, {"loss": loss, **metrics}

    return loss_fn


def evaluate(run, state, frozen) -> dict:
    """Pairwise accuracy and mean margin on the held-out pairs."""
    d = run.config.data
    full = open_dataset("dpo", run.data_path, run.tokenizer, d.max_seq_len, seed=run.config.seed,
                        skip_bad_lines=d.skip_bad_lines, cache_dir=d.cache_dir)
    held = held_out_split(len(full))[1]
    model = MiniMindRewardModel(run.config.model, policy=run.model.policy)
    scores = jax.jit(lambda p, b: pair_scores(model, p, b))
    params = jax.device_get(state.params)
    margins = []
    B = run.config.optim.batch_size
    for i in range(0, len(held), B):
        chosen, rejected = scores(params, full.batch(held[i:i + B]))
        margins.append(np.asarray(chosen - rejected))
    margins = np.concatenate(margins) if margins else np.zeros(0)
    return {"heldout_pairs": float(len(margins)), "heldout_accuracy": float(np.mean(margins > 0)),
            "heldout_margin": float(np.mean(margins))}


def export(run, params, frozen) -> dict:
    return {**params_to_torch({"model": params["model"]}, run.config.model), **head_to_torch(params, HEAD)}


STAGE = Stage(
    name="reward",
    defaults=dict(learning_rate=1e-5, batch_size=8, accumulation_steps=1, max_seq_len=512, epochs=1,
                  from_weight="full_sft", save_weight="reward"),
    data_file="dpo.jsonl",
    dataset="dpo",
    train_rows=lambda n: held_out_split(n)[0],
    make_loss=make_loss,
    init=init,
    export=export,
    evaluate=evaluate,
)
