"""Reasoning distillation: SFT on <think>/<answer> responses with the tag tokens' loss weighted 10x.

The weight goes to every target whose id is one the four tags tokenize to, normalised by the original mask sum
(reference). With this project's tokenizer each tag is a single token, so only the tags themselves are weighted;
with the reference BPE (tags split into `<`, `think`, `>`, ...) the reference's wider weighting is reproduced.
"""
import jax.numpy as jnp

import losses
from minimind_jax.data import SFTDataset
from train.stage import Stage


def make_loss(run):
    model = run.model
    special_ids = tuple(run.tokenizer.reasoning_tag_ids())

    def loss_fn(params, batch, rng, frozen, extra):
        out = model.apply({"params": params}, batch["input_ids"], train=True, rngs={"dropout": rng})
        ce = losses.reason_ce(out.logits, batch["labels"], batch["loss_mask"], jnp.asarray(special_ids), weight=10.0)
        loss = ce + out.aux_loss
        return loss, {"loss": loss, "ce": ce, "aux_loss": out.aux_loss}

    return loss_fn


STAGE = Stage(
    name="reason",
    defaults=dict(learning_rate=1e-6, batch_size=8, accumulation_steps=1, max_seq_len=720, epochs=1,
                  from_weight="dpo", save_weight="reason"),
    data_file="reason.jsonl",
    dataset=SFTDataset,
    make_loss=make_loss,
)
