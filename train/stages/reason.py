"""Reasoning distillation: SFT on <think>/<answer> responses with the tag tokens' loss weighted 10x.

The weight goes to every target whose id is one the four tags tokenize to, normalised by the original mask sum
(the reference's rule). With this project's tokenizer each tag is a single token, so only the tags themselves are
weighted; with the reference BPE (tags split into `<`, `think`, `>`, ...) the reference's wider weighting follows.
"""
from functools import partial

import jax.numpy as jnp

import losses
from train.stage import Stage
from train.stages.common import lm_loss


def make_loss(run):
    special_ids = jnp.asarray(run.tokenizer.reasoning_tag_ids())
    return lm_loss(run, partial(losses.reason_ce, special_ids=special_ids, weight=10.0))


STAGE = Stage(
    name="reason",
    generations=(2,),          # MiniMind-3 folded reasoning into full_sft (think blocks in its SFT data)
    defaults=dict(learning_rate=1e-6, batch_size=8, accumulation_steps=1, max_seq_len=720, epochs=1,
                  from_weight="dpo", save_weight="reason"),
    data_file="reason.jsonl",
    dataset="sft",
    make_loss=make_loss,
)
