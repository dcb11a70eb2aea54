"""Pure loss math for the MiniMind methods: functions of arrays, jittable, no model, no I/O.

    import losses
    loss = losses.grpo_loss(logps, ref_logps, losses.grpo_advantages(rewards, 8), completion_mask, beta=0.02)

Every default reproduces the reference MiniMind trainers; the variants research users ask for are
keyword-only arguments. Rewards (strings in, float32 arrays out, host-side) are in `losses.rewards`.
"""
from losses import rewards, rewards3
from losses.cispo import group_advantages, group_policy_loss, spans_through_first_eos, through_first_eos
from losses.ce import masked_ce, reason_ce, token_logprobs
from losses.distill import distill_kl
from losses.dpo import dpo_loss, sequence_logps
from losses.grpo import grpo_advantages, grpo_loss
from losses.kl import kl_estimate, kl_k1, kl_k2, kl_k3
from losses.masks import completion_mask, masked_mean, masked_sum, reduce_tokens, whiten
from losses.ppo import ppo_loss
from losses.ppo_gae import gae, masked_whiten, policy_mask, ppo_gae_loss, response_lengths, token_rewards
from losses.reward_model import bradley_terry_loss
from losses.spo import SPOTracker, spo_advantages, spo_baseline, spo_loss, spo_tracker_init, spo_tracker_update
from losses.spo_paper import (SPOTable, spo_paper_advantages, spo_paper_loss, spo_resample, spo_sampling_weights,
                              spo_table_baseline, spo_table_init, spo_table_rho, spo_table_stored, spo_table_update)

__all__ = [
    "rewards", "rewards3", "token_logprobs", "masked_ce", "reason_ce", "distill_kl", "dpo_loss", "sequence_logps",
    "grpo_advantages", "grpo_loss", "kl_k1", "kl_k2", "kl_k3", "kl_estimate", "completion_mask", "masked_mean",
    "masked_sum", "reduce_tokens", "whiten", "ppo_loss", "bradley_terry_loss",
    "SPOTracker", "spo_tracker_init", "spo_baseline", "spo_tracker_update", "spo_advantages", "spo_loss",
    "SPOTable", "spo_table_init", "spo_table_baseline", "spo_table_stored", "spo_table_rho", "spo_table_update",
    "spo_paper_advantages", "spo_paper_loss", "spo_sampling_weights", "spo_resample",
    "group_advantages", "group_policy_loss", "through_first_eos", "spans_through_first_eos",
    "response_lengths", "policy_mask", "token_rewards", "gae", "masked_whiten", "ppo_gae_loss",
]
