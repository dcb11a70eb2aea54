"""MiniMindConfig: the reference's fields and defaults (SPEC.md §1), frozen so it can be a Flax attribute / static arg."""
import dataclasses
import json
import math

import jax

# Preset name -> overrides of the defaults. Parameter counts (tied embedding counted once) match the reference.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),  # tests
    "small": dict(hidden_size=512, num_hidden_layers=8),                   # MiniMind2-small, 25,829,888 params
    "base": dict(hidden_size=768, num_hidden_layers=16),                   # MiniMind2, 104,030,976 params
    "moe": dict(hidden_size=640, num_hidden_layers=8, use_moe=True),       # MiniMind2-MoE, 145,029,760 params
}


@dataclasses.dataclass(frozen=True)
class MiniMindConfig:
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    vocab_size: int = 6400
    intermediate_size: int | None = None       # None: 64 * ceil(int(hidden * 8/3) / 64), filled in __post_init__
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    inference_rope_scaling: bool = False       # YaRN (factor 16 over 2048 original positions)
    dropout: float = 0.0
    hidden_act: str = "silu"
    bos_token_id: int = 1
    eos_token_id: int = 2
    # MoE
    use_moe: bool = False
    num_experts_per_tok: int = 2
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    scoring_func: str = "softmax"
    aux_loss_alpha: float = 0.01
    seq_aux: bool = True
    norm_topk_prob: bool = True

    def __post_init__(self):
        if self.intermediate_size is None:
            # The reference's SwiGLU width: 8/3 of hidden, rounded up to a multiple of 64.
            object.__setattr__(self, "intermediate_size", 64 * math.ceil(int(self.hidden_size * 8 / 3) / 64))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"MiniMindConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"MiniMindConfig: num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.hidden_act != "silu":
            raise ValueError(f"MiniMindConfig: hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        if self.use_moe and self.scoring_func != "softmax":
            raise ValueError(f"MiniMindConfig: scoring_func {self.scoring_func!r} is not supported (only 'softmax')")
        if self.use_moe and not 0 < self.num_experts_per_tok <= self.n_routed_experts:
            raise ValueError(f"MiniMindConfig: num_experts_per_tok {self.num_experts_per_tok} must be in "
                             f"1..n_routed_experts ({self.n_routed_experts})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MiniMindConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})      # intermediate_size follows an overridden hidden_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MiniMindConfig":
        """Unknown keys (HF bookkeeping such as `architectures`, `flash_attn`) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, s: str) -> "MiniMindConfig":
        return cls.from_dict(json.loads(s))


def count_params(params) -> int:
    """Number of scalars in a params pytree (the tied embedding is one matrix here, as in the reference)."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
