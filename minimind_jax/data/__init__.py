"""MiniMind's jsonl data sets as fixed-shape numpy batches, tokenized once into an on-disk cache.

    ds = SFTDataset(SAMPLE_DIR / "sft.jsonl", Tokenizer.load(), max_seq_len=340)
    for b, batch in iterate_batches(ds, 32, seed=42, epoch=0):
        batch["input_ids"], batch["labels"], batch["loss_mask"]        # [32, 339] each

MiniMind-3's formats and template (`datasets3.py`) give the same batches; their random rules draw per
(seed, epoch, row):
    ds = SFTDataset3(SAMPLE3_DIR / "sft.jsonl", Tokenizer.load(SAMPLE3_DIR / "tokenizer"), 340, seed=42)
"""
from minimind_jax.data.datasets import DPODataset, PretrainDataset, RLAIFDataset, SFTDataset, assistant_mask
from minimind_jax.data.datasets3 import AgentDataset3, DPODataset3, PretrainDataset3, RLAIFDataset3, SFTDataset3
from minimind_jax.data.jsonl import DataError
from minimind_jax.data.loader import batch_rows, epoch_permutation, iterate_batches, num_batches
from minimind_jax.data.open import open_dataset
from minimind_jax.paths import shipped

SAMPLE_DIR = shipped("sample")
SAMPLE3_DIR = shipped("sample3")         # MiniMind-3 formats; its tokenizer is SAMPLE3_DIR / "tokenizer"
SAMPLE_DIRS = {2: SAMPLE_DIR, 3: SAMPLE3_DIR}

__all__ = ["DataError", "PretrainDataset", "SFTDataset", "DPODataset", "RLAIFDataset", "assistant_mask",
           "PretrainDataset3", "SFTDataset3", "DPODataset3", "RLAIFDataset3", "AgentDataset3",
           "epoch_permutation", "num_batches", "batch_rows", "iterate_batches", "SAMPLE_DIR", "SAMPLE3_DIR", "SAMPLE_DIRS", "open_dataset"]
