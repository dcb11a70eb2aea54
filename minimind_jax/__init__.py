"""MiniMind in JAX/Flax: the model library (config, model, heads, LoRA, generation, weight interop)."""
from minimind_jax.config import PRESETS, PRESETS3, MiniMindConfig, count_active_params, count_params
from minimind_jax.heads import MiniMindCritic, MiniMindRewardModel
from minimind_jax.model import CausalLMOutput, KVCache, MiniMindForCausalLM
from minimind_jax.precision import Policy, get_policy

__all__ = ["MiniMindConfig", "MiniMindForCausalLM", "MiniMindCritic", "MiniMindRewardModel", "Policy", "get_policy",
           "CausalLMOutput", "KVCache", "PRESETS", "PRESETS3", "count_params", "count_active_params"]
