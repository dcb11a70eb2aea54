"""MiniMind's jsonl data sets as fixed-shape numpy batches, tokenized once into an on-disk cache.

    ds = SFTDataset(SAMPLE_DIR / "sft.jsonl", Tokenizer.load(), max_seq_len=340)
    for b, batch in iterate_batches(ds, 32, seed=42, epoch=0):
        batch["input_ids"], batch["labels"], batch["loss_mask"]        # [32, 339] each
"""
from pathlib import Path

from minimind_jax.data.datasets import DPODataset, PretrainDataset, RLAIFDataset, SFTDataset, assistant_mask
from minimind_jax.data.jsonl import DataError
from minimind_jax.data.loader import batch_rows, epoch_permutation, iterate_batches, num_batches

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"

__all__ = ["DataError", "PretrainDataset", "SFTDataset", "DPODataset", "RLAIFDataset", "assistant_mask",
           "epoch_permutation", "num_batches", "batch_rows", "iterate_batches", "SAMPLE_DIR"]
