"""DPO: `-log sigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))` with a frozen copy of the starting policy.

Chosen and rejected rows go through the model as one batch [chosen; rejected], as in the reference; sequence
log-probs are masked means (the reference) or sums (`--dpo_sum_logps 1`).
"""
import jax
import jax.numpy as jnp

import losses
from train.stage import Stage
from train.stages.common import init_with_reference


def make_loss(run):
    model, o = run.model, run.config.objective

    def loss_fn(params, batch, key, frozen, extra):
        cat = lambda k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])    # [2B, T]
        ids, labels, mask = cat("input_ids"), cat("labels"), cat("loss_mask")
        ref_logps = jax.lax.stop_gradient(losses.token_logprobs(model.apply({"params": frozen["ref"]}, ids).logits, labels))
        out = model.apply({"params": params}, ids, train=True, rngs={"dropout": key})
        logps = losses.token_logprobs(out.logits, labels)                                  # [2B, T]
        dpo, metrics = losses.dpo_loss(logps, ref_logps, mask, o.beta, average_log_prob=not o.dpo_sum_logps,
                                       return_metrics=True)
        loss = dpo + out.aux_loss
        return loss, {"loss": loss, "dpo_loss": dpo, "aux_loss": out.aux_loss, **metrics}

    return loss_fn


STAGE = Stage(
    name="dpo",
    defaults=dict(learning_rate=4e-8, batch_size=4, accumulation_steps=1, max_seq_len=1024, epochs=1,
                  from_weight="full_sft", save_weight="dpo", beta=0.1),
    defaults3=dict(beta=0.15, dpo_sum_logps=1),       # MiniMind-3 sums the sequence log-probs
    data_file="dpo.jsonl",
    dataset="dpo",
    make_loss=make_loss,
    init=init_with_reference,
)
