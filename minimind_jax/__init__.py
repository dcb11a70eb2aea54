"""MiniMind in JAX/Flax: the model library (config, model, heads, LoRA, generation, weight interop)."""
from minimind_jax.config import PRESETS, MiniMindConfig, count_params
from minimind_jax.heads import MiniMindCritic, MiniMindRewardModel
from minimind_jax.model import CausalLMOutput, KVCache, MiniMindForCausalLM
from minimind_jax.precision import Policy, get_policy

__all__ = ["MiniMindConfig", "MiniMindForCausalLM", "MiniMindCritic", "MiniMindRewardModel", "Policy", "get_policy",
           "CausalLMOutput", "KVCache", "PRESETS", "count_params"]
