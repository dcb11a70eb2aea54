"""Scalar heads on the MiniMind backbone: the PPO critic (a value per position) and the reward model (a score per row).

Both keep the backbone under 'model', so they start from a language model's weights with `init_head_params`.
"""
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from minimind_jax.config import MiniMindConfig
from minimind_jax.model import MiniMindModel
from minimind_jax.precision import POLICIES, Policy

F32 = jnp.float32


def scalar_head(name: str, policy: Policy) -> nn.Dense:
    """Linear(hidden, 1) with bias, in float32 (values and scores feed losses directly)."""
    return nn.Dense(1, dtype=F32, param_dtype=policy.param_dtype, name=name)


class MiniMindCritic(nn.Module):
    """values[b, t] = value_head(final-normed hidden[b, t]).

    The reference critic applies the final RMSNorm a second time before its value head (both generations); this
    critic normalises once unless `double_norm=True`, which reproduces the reference's values.
    """
    cfg: MiniMindConfig
    policy: Policy = POLICIES["fp32"]
    double_norm: bool = False
    head_name: ClassVar[str] = "value_head"

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, train: bool = False):
        backbone = MiniMindModel(self.cfg, self.policy, name="model")
        hidden, _, _ = backbone(input_ids, attention_mask, train)                        # [B, T, H] normed
        if self.double_norm:
            hidden = backbone.final_norm(hidden)
        return scalar_head(self.head_name, self.policy)(hidden.astype(F32))[..., 0]     # [B, T] float32


def last_token_index(attention_mask):
    """Index of each row's last non-pad token, [B] (left or right padding)."""
    T = attention_mask.shape[1]
    return T - 1 - jnp.argmax(attention_mask[:, ::-1] > 0, axis=1)


class MiniMindRewardModel(nn.Module):
    """scores[b] = score_head(final-normed hidden at row b's last non-pad token)."""
    cfg: MiniMindConfig
    policy: Policy = POLICIES["fp32"]
    head_name: ClassVar[str] = "score_head"

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, train: bool = False):
        hidden, _, _ = MiniMindModel(self.cfg, self.policy, name="model")(input_ids, attention_mask, train)  # [B, T, H]
        if attention_mask is None:
            last = hidden[:, -1]
        else:
            idx = last_token_index(attention_mask)
            last = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]          # [B, H]
        return scalar_head(self.head_name, self.policy)(last.astype(F32))[:, 0]          # [B] float32


def init_head_params(lm_params, head_module: MiniMindCritic | MiniMindRewardModel, rng: jax.Array) -> dict:
    """{'model': the LM's backbone arrays (shared, not copied), <head_name>: a freshly initialised head}."""
    head = scalar_head(head_module.head_name, head_module.policy)
    head_params = head.init(rng, jnp.zeros((1, head_module.cfg.hidden_size), F32))["params"]
    return {"model": lm_params["model"], head_module.head_name: head_params}


def head_to_torch(params, head_name: str) -> dict:
    """A scalar head under the reference's names: '<head>.weight' (1, H) and '<head>.bias' (1,)."""
    import numpy as np
    head = params[head_name]
    return {f"{head_name}.weight": np.asarray(head["kernel"]).T, f"{head_name}.bias": np.asarray(head["bias"])}


def load_reward_model(path, cfg: MiniMindConfig):
    """(module, params) of a reward model saved by the trainer's reward stage: the backbone under the reference's
    names plus `score_head.weight` / `score_head.bias`. One-line errors name the file and what is missing."""
    import numpy as np
    from minimind_jax.convert import params_from_torch, read_state_dict
    name = MiniMindRewardModel.head_name
    tensors = dict(read_state_dict(path))
    if f"{name}.weight" not in tensors or f"{name}.bias" not in tensors:
        raise ValueError(f"{path}: no {name}.weight / {name}.bias: not a reward model (train one with --stage reward)")
    head = {"kernel": np.asarray(tensors.pop(f"{name}.weight"), np.float32).T,
            "bias": np.asarray(tensors.pop(f"{name}.bias"), np.float32)}
    backbone = params_from_torch({k: np.asarray(v, np.float32) for k, v in tensors.items()}, cfg, source=str(path))
    return MiniMindRewardModel(cfg), {"model": backbone["model"], name: head}
