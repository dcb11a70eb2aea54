"""Check and tokenize a jsonl file ahead of training (fills the cache the trainer then reuses):

    python -m minimind_jax.data sft data/sample/sft.jsonl --max_seq_len 340 [--skip_bad_lines] [--tokenizer DIR]
    python -m minimind_jax.data sft3 data/sample3/sft.jsonl --max_seq_len 512       # MiniMind-3 formats

A bad line stops it with one line `path:line: problem` and exit status 1; with --skip_bad_lines it is counted.
"""
import argparse
import sys

import numpy as np

from minimind_jax.data import (AgentDataset3, DataError, DPODataset, DPODataset3, PretrainDataset, PretrainDataset3,
                               RLAIFDataset, RLAIFDataset3, SFTDataset, SFTDataset3)

KINDS = {"pretrain": PretrainDataset, "sft": SFTDataset, "dpo": DPODataset, "rlaif": RLAIFDataset,
         "pretrain3": PretrainDataset3, "sft3": SFTDataset3, "dpo3": DPODataset3, "rlaif3": RLAIFDataset3,
         "agent3": AgentDataset3}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimind_jax.data", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=sorted(KINDS), help="the row format (reason and lora files are sft)")
    p.add_argument("path")
    p.add_argument("--max_seq_len", type=int, default=340)
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer dir (default: data/sample/tokenizer; data/sample3/tokenizer for the *3 kinds)")
    p.add_argument("--skip_bad_lines", action="store_true", help="skip, count and report bad lines")
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--workers", type=int, default=None, help="tokenizing processes (default: by file size)")
    a = p.parse_args(argv)
    from minimind_jax.tokenizer import SAMPLE3_TOKENIZER_DIR, Tokenizer
    tokenizer = a.tokenizer or (SAMPLE3_TOKENIZER_DIR if a.kind.endswith("3") else None)
    try:
        ds = KINDS[a.kind](a.path, Tokenizer.load(tokenizer), a.max_seq_len, skip_bad_lines=a.skip_bad_lines,
                           cache_dir=a.cache_dir, workers=a.workers)
    except DataError as e:
        print(e, file=sys.stderr)
        return 1
    m = ds.cache.meta
    lengths = np.diff(ds.cache.offsets)
    print(f"{a.path}: {len(ds):,} rows, {m['tokens']:,} tokens (mean {lengths.mean():.0f}, max {lengths.max()} per "
          f"sequence), {m['truncated']:,} cut to {a.max_seq_len}, {m['skipped']:,} bad lines skipped; "
          f"cache {ds.cache.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
