"""MiniMindConfig: the reference's fields and defaults for both model generations, frozen so it can be a Flax
attribute / static arg.

Generation 2 is MiniMind2 (LLaMA-style); generation 3 is minimind-3, the Qwen3-compatible successor:

    generation 2:  512 hidden, 2 kv heads, eps 1e-5, FFN 64*ceil(int(8h/3)/64), MoE top-2 of 4 plus 1 shared
                   expert, aux loss alpha * (per sequence | per batch) with alpha 0.01
    generation 3:  768 hidden, 4 kv heads, eps 1e-6, FFN 64*ceil(h*pi/64), QK-norm, the norm weight multiplied
                   in float32, MoE top-1 of 4 and no shared expert, aux loss E * coef * sum_e f_e P_e, coef 5e-4

Fields left at None take their generation's value in __post_init__, so `MiniMindConfig(generation=3)` is the
minimind-3 default and `MiniMindConfig()` the MiniMind2 one. Field names are generation 2's where the concept is
the same (`n_routed_experts` is minimind-3's `num_experts`, `aux_loss_alpha` its `router_aux_loss_coef`);
`from_dict` reads either generation's reference config.

Presets: `from_preset(name, generation=2|3, **overrides)` looks `name` up in PRESETS (generation 2: tiny, small,
base, moe) or PRESETS3 (generation 3: tiny, small = minimind-3, moe = minimind-3-moe), so a `--minimind 3` flag
only adds `generation=3` to the overrides.
"""
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
PRESETS3: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2),                     # tests: 8 q / 4 kv heads of 8, FFN 256
    "small": dict(hidden_size=768, num_hidden_layers=8),                   # minimind-3, 63,912,192 params
    "moe": dict(hidden_size=768, num_hidden_layers=8, use_moe=True),       # minimind-3-moe, 198,416,640 (63,936,768 active)
}
_PRESETS = {2: PRESETS, 3: PRESETS3}

# The value each generation gives a field left at None (intermediate_size, head_dim and moe_intermediate_size are
# derived from other fields instead).
GENERATION_DEFAULTS: dict[int, dict] = {
    2: dict(hidden_size=512, num_key_value_heads=2, rms_norm_eps=1e-5, num_experts_per_tok=2, n_shared_experts=1,
            aux_loss_alpha=0.01, seq_aux=True, qk_norm=False, norm_weight_fp32=False),
    3: dict(hidden_size=768, num_key_value_heads=4, rms_norm_eps=1e-6, num_experts_per_tok=1, n_shared_experts=0,
            aux_loss_alpha=5e-4, seq_aux=False, qk_norm=True, norm_weight_fp32=True),
}
# Fields a generation-2 reference config does not have: left out of to_dict when they hold what generation 2
# implies, so a MiniMind2 config serialises exactly as the reference's.
_GEN3_FIELDS = ("generation", "head_dim", "moe_intermediate_size", "qk_norm", "norm_weight_fp32")
# Keys only one generation's reference config has (minimind-3 renamed the MoE fields and dropped seq_aux).
_REFERENCE_KEYS = {2: {"n_routed_experts", "n_shared_experts", "aux_loss_alpha", "seq_aux", "scoring_func"},
                   3: {"num_experts", "router_aux_loss_coef"}}
_RENAMED3 = {"num_experts": "n_routed_experts", "router_aux_loss_coef": "aux_loss_alpha"}


def detect_generation(d: dict) -> int | None:
    """The generation a config dict is for: its `generation` key, else the reference keys it holds (None when it
    holds neither generation's). A dict with both generations' keys is a one-line ValueError."""
    if "generation" in d:
        return int(d["generation"])
    found = {g for g, keys in _REFERENCE_KEYS.items() if keys & set(d)}
    if len(found) > 1:
        raise ValueError(f"config mixes generation-2 keys ({', '.join(sorted(_REFERENCE_KEYS[2] & set(d)))}) with "
                         f"generation-3 keys ({', '.join(sorted(_REFERENCE_KEYS[3] & set(d)))})")
    return found.pop() if found else None


def ffn_width(hidden_size: int, generation: int) -> int:
    """The reference's SwiGLU width, rounded up to a multiple of 64: 8/3 of hidden (2), pi times hidden (3)."""
    if generation == 2:
        return 64 * math.ceil(int(hidden_size * 8 / 3) / 64)
    return 64 * math.ceil(hidden_size * math.pi / 64)


@dataclasses.dataclass(frozen=True)
class MiniMindConfig:
    hidden_size: int | None = None             # None: 512 (generation 2), 768 (3)
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None     # None: 2 (generation 2), 4 (3)
    vocab_size: int = 6400
    intermediate_size: int | None = None       # None: ffn_width(hidden_size, generation)
    max_position_embeddings: int = 32768
    rms_norm_eps: float | None = None          # None: 1e-5 (generation 2), 1e-6 (3)
    rope_theta: float = 1e6
    inference_rope_scaling: bool = False       # YaRN (factor 16 over 2048 original positions)
    dropout: float = 0.0
    hidden_act: str = "silu"
    bos_token_id: int = 1
    eos_token_id: int = 2
    # MoE
    use_moe: bool = False
    num_experts_per_tok: int | None = None     # None: 2 (generation 2), 1 (3)
    n_routed_experts: int = 4
    n_shared_experts: int | None = None        # None: 1 (generation 2), 0 (3)
    scoring_func: str = "softmax"
    aux_loss_alpha: float | None = None        # None: 0.01 (generation 2), 5e-4 (3)
    seq_aux: bool | None = None                # per-sequence aux loss; None: True (generation 2), False (3)
    norm_topk_prob: bool = True
    # Generation 3
    generation: int = 2                        # 2: MiniMind2, 3: minimind-3
    head_dim: int | None = None                # None: hidden_size // num_attention_heads
    moe_intermediate_size: int | None = None   # each expert's width; None: intermediate_size
    qk_norm: bool | None = None                # RMSNorm over head_dim on q and k before RoPE; None: generation 3
    norm_weight_fp32: bool | None = None       # RMSNorm multiplies its weight before casting back; None: generation 3
    # Optional routing (not the reference's): drop token-expert pairs past capacity_factor x an expert's balanced share
    moe_capacity_factor: float | None = None

    def __post_init__(self):
        if self.generation not in GENERATION_DEFAULTS:
            raise ValueError(f"MiniMindConfig: generation {self.generation!r} is not supported (2 or 3)")
        for name, value in GENERATION_DEFAULTS[self.generation].items():
            self._default(name, value)
        self._default("intermediate_size", ffn_width(self.hidden_size, self.generation))
        self._default("moe_intermediate_size", self.intermediate_size)
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"MiniMindConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads} (or give head_dim)")
        self._default("head_dim", self.hidden_size // self.num_attention_heads)
        self._validate()

    def _default(self, name: str, value):
        if getattr(self, name) is None:
            object.__setattr__(self, name, value)

    def _validate(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"MiniMindConfig: num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"MiniMindConfig: head_dim {self.head_dim} must be even and positive (rotate-half RoPE)")
        if self.hidden_act != "silu":
            raise ValueError(f"MiniMindConfig: hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        if self.use_moe and self.scoring_func != "softmax":
            raise ValueError(f"MiniMindConfig: scoring_func {self.scoring_func!r} is not supported (only 'softmax')")
        if self.use_moe and not 0 < self.num_experts_per_tok <= self.n_routed_experts:
            raise ValueError(f"MiniMindConfig: num_experts_per_tok {self.num_experts_per_tok} must be in "
                             f"1..n_routed_experts ({self.n_routed_experts})")
        if self.generation == 3 and self.seq_aux:
            raise ValueError("MiniMindConfig: generation 3 has no per-sequence aux loss (seq_aux must be False)")
        if self.generation == 3 and self.n_shared_experts:
            raise ValueError(f"MiniMindConfig: generation 3 has no shared experts (n_shared_experts "
                             f"{self.n_shared_experts})")

    @classmethod
    def from_preset(cls, name: str, generation: int = 2, **overrides) -> "MiniMindConfig":
        presets = _PRESETS.get(generation)
        if presets is None:
            raise ValueError(f"unknown generation {generation!r}: choose 2 or 3")
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}" + ("" if generation == 2 else f" for generation {generation}")
                             + f": choose one of {', '.join(presets)}")
        # Derived fields (intermediate_size, head_dim) follow an overridden hidden_size.
        return cls(**{**presets[name], **overrides, "generation": generation})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.moe_capacity_factor is None:         # not a reference field: only written when used
            d.pop("moe_capacity_factor")
        if self.generation == 2:
            implied = dict(generation=2, head_dim=self.hidden_size // self.num_attention_heads,
                           moe_intermediate_size=self.intermediate_size, qk_norm=False, norm_weight_fp32=False)
            d = {k: v for k, v in d.items() if k not in _GEN3_FIELDS or v != implied[k]}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MiniMindConfig":
        """Our own to_dict, or either generation's reference config (minimind-3's MoE names are mapped; the
        generation comes from detect_generation, else 2). Unknown keys (HF bookkeeping such as `architectures`,
        `flash_attn`) are ignored."""
        generation = detect_generation(d) or 2
        if generation == 3:
            if not d.get("tie_word_embeddings", True):
                raise ValueError("MiniMindConfig: tie_word_embeddings=False is not supported (MiniMind ties them)")
            d = {_RENAMED3.get(k, k): v for k, v in d.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in names}, "generation": generation})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, s: str) -> "MiniMindConfig":
        return cls.from_dict(json.loads(s))


def count_params(params) -> int:
    """Number of scalars in a params pytree (the tied embedding is one matrix here, as in the reference)."""
    return sum(int(x.size) for x in jax.tree.leaves(params))


def count_active_params(params, cfg: MiniMindConfig) -> int:
    """Scalars one token uses: count_params less the n_routed_experts - num_experts_per_tok experts it skips."""
    total = count_params(params)
    if not cfg.use_moe:
        return total
    experts = sum(count_params(layer["mlp"]["experts"]) for name, layer in params["model"].items()
                  if name.startswith("layers_"))
    return total - experts * (cfg.n_routed_experts - cfg.num_experts_per_tok) // cfg.n_routed_experts
