"""What several stages share, written once: the causal-LM loss, a frozen reference copy, the RL policy-gradient
loss around an objective from `losses`, and where an RL stage starts from."""
from typing import Callable

import jax
import jax.numpy as jnp

import losses
from train.rollout import policy_logps
from train.stage import Run
from train.weights import start_params


def lm_loss(run: Run, ce: Callable | None = None):
    """The causal-LM objective, `ce(logits, labels, mask) + aux` (default: the masked CE) — pretrain, full_sft,
    lora and, with the tag-weighted CE, reason."""
    model, ce = run.model, ce or losses.masked_ce

    capacity = run.config.model.moe_capacity_factor

    def loss_fn(params, batch, rng, frozen, extra):
        inputs = ({"params": params}, batch["input_ids"])
        if capacity:         # routing that drops pairs reports how many, through the model's intermediates
            out, sown = model.apply(*inputs, train=True, rngs={"dropout": rng}, mutable=["intermediates"])
            fracs = [x for path, x in jax.tree_util.tree_leaves_with_path(sown)
                     if "moe_dropped_frac" in jax.tree_util.keystr(path)]               # one per MoE layer
            dropped = {"moe_dropped_frac": jnp.mean(jnp.stack(fracs))}
        else:
            out, dropped = model.apply(*inputs, train=True, rngs={"dropout": rng}), {}          # logits [B, T, V]
        value = ce(out.logits, batch["labels"], batch["loss_mask"])
        loss = value + out.aux_loss
        return loss, {"loss": loss, "ce": value, "aux_loss": out.aux_loss, **dropped}

    return loss_fn


def frozen_copy(params):
    """A copy the step reads but never donates (the trainable params' buffers are donated every step)."""
    return jax.tree.map(jnp.copy, params)


def init_with_reference(run: Run):
    """Train the starting model against a frozen copy of itself (DPO's and the RL stages' reference policy)."""
    params = start_params(run.config)
    return params, {"ref": frozen_copy(params)}


def rl_start_weight(flags) -> str:
    """The RL stages start from the reasoning model when the format reward is on, else from full_sft."""
    return "reason" if flags.reasoning else "full_sft"


def policy_gradient_loss(run: Run, objective: Callable):
    """The RL update's loss: the policy's completion log-probs [N, R] under `objective(logps, batch) ->
    (loss, metrics)`, plus the MoE aux loss."""
    model = run.model

    def loss_fn(params, batch, rng, frozen, extra):
        logps, aux = policy_logps(model, params, batch, rng)                             # [N, R]
        pg, metrics = objective(logps, batch)
        loss = pg + aux
        return loss, {"loss": loss, "policy_loss": pg, "aux_loss": aux, **metrics}

    return loss_fn


def kl_regularized_loss(run: Run, loss):
    """`policy_gradient_loss` of a per-token objective with a KL to the frozen reference, called as the GRPO/SPO
    losses are: `loss(logps, ref_logps, advantages, completion_mask, beta, kl_estimator=, return_metrics=True)`."""
    o = run.config.objective

    def objective(logps, batch):
        return loss(logps, batch["ref_logps"], batch["advantages"], batch["completion_mask"], o.beta,
                    kl_estimator=o.kl_estimator, return_metrics=True)
    return policy_gradient_loss(run, objective)
