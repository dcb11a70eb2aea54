"""DPO: `-log sigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))` with a frozen copy of the starting policy.

Chosen and rejected rows go through the model as one batch [chosen; rejected], as in the reference; sequence
log-probs are masked means (the reference) or sums (`--dpo_sum_logps 1`).
"""
import jax
import jax.numpy as jnp

import losses
from minimind_jax.data import DPODataset
from train.stage import Stage, load_or_init


def init(run, rng):
    params = load_or_init(run, rng)
    return params, {"ref": jax.tree.map(jnp.copy, params)}   # a copy: the policy's buffers are donated each step


def make_loss(run):
    model, beta, average = run.model, run.args.beta, not run.args.dpo_sum_logps

    def loss_fn(params, batch, rng, frozen, extra):
        cat = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])    # [2B, T]
        ids, labels, mask = cat("input_ids"), cat("labels"), cat("loss_mask")
        ref_logps = jax.lax.stop_gradient(losses.token_logprobs(model.apply({"params": frozen["ref"]}, ids).logits, labels))
        out = model.apply({"params": params}, ids, train=True, rngs={"dropout": rng})
        logps = losses.token_logprobs(out.logits, labels)                                  # [2B, T]
        dpo, metrics = losses.dpo_loss(logps, ref_logps, mask, beta, average_log_prob=average, return_metrics=True)
        loss = dpo + out.aux_loss
        return loss, {"loss": loss, "dpo_loss": dpo, "aux_loss": out.aux_loss, **metrics}

    return loss_fn


STAGE = Stage(
    name="dpo",
    defaults=dict(learning_rate=4e-8, batch_size=4, accumulation_steps=1, max_seq_len=1024, epochs=1,
                  from_weight="full_sft", save_weight="dpo", beta=0.1),
    data_file="dpo.jsonl",
    dataset=DPODataset,
    make_loss=make_loss,
    init=init,
)
