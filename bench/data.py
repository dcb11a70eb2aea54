"""python -m bench.data: how fast the sample corpus is tokenized into the cache (MB/s, tokens/s; one process and
a pool of workers), how fast the tokenizers encode without the JSON around it, and batches/s of the loader.

Every cache is built from scratch in a temporary directory, so the numbers include reading, parsing, templating,
tokenizing and writing the memmap: what a first training run pays once.
"""
import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path


from bench.common import environment, peak_rss_mb, print_table, write_json
from minimind_jax.data import SAMPLE_DIR, DPODataset, PretrainDataset, RLAIFDataset, SFTDataset, iterate_batches
from minimind_jax.tokenizer import Tokenizer, apply_chat_template

FILES = [("pretrain", PretrainDataset, 340), ("sft", SFTDataset, 340), ("dpo", DPODataset, 1024),
         ("reason", SFTDataset, 720), ("rlaif", RLAIFDataset, 66)]


def build_rate(cls, path: Path, tok, max_seq_len: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = cls(path, tok, max_seq_len, cache_dir=tmp, workers=workers)
        dt = time.perf_counter() - t0
        tokens = ds.cache.meta["tokens"]
    mb = path.stat().st_size / 1e6
    return {"MB": mb, "seconds": dt, "MB_per_s": mb / dt, "tokens_per_s": tokens / dt}


def encode_rate(tok, texts: list[str]) -> dict:
    mb = sum(len(t.encode()) for t in texts) / 1e6
    t0 = time.perf_counter()
    n = sum(map(len, tok.encode_batch(texts)))
    dt = time.perf_counter() - t0
    return {"MB_per_s": mb / dt, "tokens_per_s": n / dt, "chars_per_token": sum(map(len, texts)) / n}


def loader_rate(ds, batch_size: int, seconds: float = 2.0) -> float:
    """Batches/s of iterate_batches over one epoch (or `seconds` of it)."""
    n, t0 = 0, time.perf_counter()
    for _ in iterate_batches(ds, batch_size, seed=0, epoch=0):
        n += 1
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0)


def texts_of(path: Path) -> list[str]:
    out = []
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        out += [row["text"]] if "text" in row else [apply_chat_template(row[k]) for k in
                                                    ("conversations", "chosen", "rejected") if k in row]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2, help="processes for the parallel build")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--big_mb", type=float, default=60, help="size of the repeated-pretrain file for the pool")
    p.add_argument("--reference_tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                                         "minimind_tokenizer"))
    p.add_argument("--out", default="bench/results/data.json")
    a = p.parse_args(argv)
    tok = Tokenizer.load()
    rows = []
    for name, cls, L in FILES:
        path = SAMPLE_DIR / f"{name}.jsonl"
        r = build_rate(cls, path, tok, L, workers=1)
        rows.append({"what": f"cache build {name}.jsonl", "workers": 1, **r})
    pre = SAMPLE_DIR / "pretrain.jsonl"
    with tempfile.TemporaryDirectory() as tmp:             # a bigger file: pretrain.jsonl repeated
        big = Path(tmp) / "big.jsonl"
        with open(big, "wb") as f:
            while f.tell() < a.big_mb * 1e6:
                with open(pre, "rb") as src:
                    shutil.copyfileobj(src, f)
        for workers in (1, a.workers):
            rss0 = peak_rss_mb()
            r = build_rate(PretrainDataset, big, tok, 340, workers=workers)
            children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            rows.append({"what": f"cache build pretrain x{round(r['MB'] / 7.25)}", "workers": workers, **r,
                         "peak_rss_growth_mb": peak_rss_mb() - rss0, "worker_peak_rss_mb": children if workers > 1 else ""})
    texts = texts_of(pre)
    rows.append({"what": "encode_batch pretrain (ours, SentencePiece)", **encode_rate(tok, texts)})
    if Path(a.reference_tokenizer).exists():
        ref = Tokenizer.load(a.reference_tokenizer)
        rows.append({"what": "encode_batch pretrain (reference BPE, tokenizers)", **encode_rate(ref, texts)})
    print_table(rows, "tokenization (2 cores shared; caches built from scratch)")

    loader = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls, L in FILES:
            ds = cls(SAMPLE_DIR / f"{name}.jsonl", tok, L, cache_dir=tmp)
            B = a.batch_size
            bps = loader_rate(ds, B)
            loader.append({"data set": f"{cls.__name__} {name}", "batch": B, "max_seq_len": L,
                           "batches_per_s": bps, "rows_per_s": bps * B})
    print_table(loader, "loader: iterate_batches from the cache")
    write_json(a.out, {"environment": environment(), "tokenization": rows, "loader": loader,
                       "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
