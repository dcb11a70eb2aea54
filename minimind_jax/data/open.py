"""One door to every data set: `open_dataset(kind, path, tokenizer, ...)` picks the class of the tokenizer's
generation (its chat template says which), so a trainer names what the rows are ("sft", "dpo", ...), never a class.

The random rules of MiniMind-3's formats (system-prompt injection, empty-think removal, open thinking) take their
ratios here (None: the upstream default) and draw per (seed, epoch, row); MiniMind-2's formats have none.
"""
from minimind_jax.data.datasets import DPODataset, PretrainDataset, RLAIFDataset, SFTDataset
from minimind_jax.data.datasets3 import AgentDataset3, DPODataset3, PretrainDataset3, RLAIFDataset3, SFTDataset3

KINDS = {
    2: {"pretrain": PretrainDataset, "sft": SFTDataset, "dpo": DPODataset, "rlaif": RLAIFDataset},
    3: {"pretrain": PretrainDataset3, "sft": SFTDataset3, "dpo": DPODataset3, "rlaif": RLAIFDataset3,
        "agent": AgentDataset3},
}
# Which ratios each MiniMind-3 format takes (the others have no such rule).
RATIOS = {"sft": ("add_system_ratio", "empty_think_ratio"), "dpo": ("empty_think_ratio",),
          "rlaif": ("add_system_ratio", "thinking_ratio"), "agent": ("thinking_ratio",)}


def open_dataset(kind: str, path, tokenizer, max_seq_len: int, *, seed: int = 0, skip_bad_lines: bool = False,
                 cache_dir=None, **ratios):
    """The `kind` data set of `path` for this tokenizer's generation; `ratios` (add_system_ratio, empty_think_ratio,
    thinking_ratio) left at None keep the format's default."""
    generation = tokenizer.generation
    if kind not in KINDS[generation]:
        raise ValueError(f"{path}: no {kind!r} data set for MiniMind-{generation} (there are "
                         f"{', '.join(KINDS[generation])})")
    cls = KINDS[generation][kind]
    kwargs = dict(skip_bad_lines=skip_bad_lines, cache_dir=cache_dir)
    if generation == 3 and kind != "pretrain":
        kwargs["seed"] = seed
        kwargs.update({k: v for k, v in ratios.items() if k in RATIOS[kind] and v is not None})
    return cls(path, tokenizer, max_seq_len, **kwargs)
