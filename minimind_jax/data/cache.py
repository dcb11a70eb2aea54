"""Tokenize a jsonl file once, keep the ids on disk, read batches straight from a memmap.

A cache is a directory:
    ids.bin        every token sequence back to back, uint16 (uint32 for vocabularies over 65,536)
    offsets.npy    int64 [S + 1]; sequence s is ids[offsets[s]:offsets[s + 1]]; a row has `per_row` sequences
    strings.bin    (optional) per row, a JSON list of strings the batch hands to the host (RLAIF prompt, answer)
    string_offsets.npy
    flags.npy      (optional) uint8 [rows]: per-row facts the format records (e.g. which text variants exist)
    meta.json      what it was built from, counts, skipped lines
Its name is a hash of the file's content, the tokenizer model, the row format and max_seq_len: change any and it is
rebuilt; nothing else can make it stale. It is written to a temporary directory and renamed into place, so a crash
or a second process building the same cache never leaves half a cache behind.

The file is streamed in chunks of whole lines (`jsonl.read_chunks`); big files on machines with 4+ cores are
tokenized by a pool of worker processes in order, the rest in this process (the backend still uses its own threads). Nothing but the current
chunks is ever held as Python objects, so a 1.6 GB corpus costs its ids on disk and a few MB of RAM.
"""
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from minimind_jax.data.jsonl import BadRow, Chunk, DataError, parse_line, read_chunks

CACHE_VERSION = 1
CHUNK_BYTES = 1 << 20
PARALLEL_MIN_BYTES = 32 << 20     # below this a process pool costs more to start than it saves


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINIMIND_JAX_CACHE", Path.home() / ".cache" / "minimind_jax"))


def file_digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------- tokenizing one chunk
@dataclass
class Job:
    """How to turn rows into token sequences: `row_texts(row) -> (texts, strings)` validates a row and returns the
    `per_row` texts to tokenize and the strings to keep (with `flagged`, `(texts, strings, flags)`, flags an int
    in [0, 256)); each sequence is cut to max_seq_len from the right (or from the left, keeping the end, when
    truncate_left)."""
    tokenizer: object
    row_texts: Callable
    per_row: int
    max_seq_len: int
    truncate_left: bool
    dtype: np.dtype
    flagged: bool = False


@dataclass
class Tokenized:
    """The part of the cache one chunk contributes."""
    ids: np.ndarray                                         # [tokens] dtype
    lengths: np.ndarray                                     # int64 [rows * per_row]
    strings: list = field(default_factory=list)             # [rows] bytes (JSON lists), when the format keeps any
    flags: list = field(default_factory=list)               # [rows] int, when the format is flagged
    errors: list = field(default_factory=list)              # [(line, problem)] in line order
    truncated: int = 0                                      # sequences cut to max_seq_len


def tokenize_chunk(job: Job, chunk: Chunk) -> Tokenized:
    texts, strings, flags, errors = [], [], [], []
    for k, raw in enumerate(chunk.data.split(b"\n")):
        try:
            row = parse_line(raw)
            if row is None:
                continue
            row_texts, row_strings, *row_flags = job.row_texts(row)
        except BadRow as e:
            errors.append((chunk.first_line + k, str(e)))
            continue
        texts.extend(row_texts)
        if row_strings:
            strings.append(json.dumps(row_strings, ensure_ascii=False).encode())
        flags.extend(row_flags)
    L = job.max_seq_len
    seqs = job.tokenizer.encode_batch(texts) if texts else []
    truncated = sum(len(s) > L for s in seqs)
    seqs = [s[-L:] if job.truncate_left else s[:L] for s in seqs]
    lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
    ids = np.fromiter(itertools.chain.from_iterable(seqs), job.dtype, int(lengths.sum()))
    return Tokenized(ids, lengths, strings, flags, errors, truncated)


_JOB: Job | None = None                                      # the worker process's job, set once by its initializer


def _init_worker(job: Job):
    global _JOB
    _JOB = job


def tokenize_item(job: Job, item: Chunk | DataError) -> tuple[int, Tokenized]:
    """(bytes consumed, result) of one item of `read_chunks`; an over-long line becomes a one-error result."""
    if isinstance(item, DataError):
        return 0, Tokenized(np.zeros(0, job.dtype), np.zeros(0, np.int64), errors=[(item.line, item.problem)])
    return len(item.data), tokenize_chunk(job, item)


def _tokenize_in_worker(item: Chunk | DataError) -> tuple[int, Tokenized]:
    return tokenize_item(_JOB, item)


# ---------------------------------------------------------------------- the cache
class TokenCache:
    """A built cache, read-only: `seq(s)` is token sequence s; `strings(r)` the kept strings of row r."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        self.per_row = self.meta["per_row"]
        self.offsets = np.load(self.dir / "offsets.npy")                                   # int64 [S + 1]
        total = int(self.offsets[-1])
        dtype = np.dtype(self.meta["dtype"])
        # np.memmap refuses an empty file; an empty array reads the same.
        self.ids = np.memmap(self.dir / "ids.bin", dtype, "r", shape=(total,)) if total else np.zeros(0, dtype)
        self._strings = None
        self.flags = np.load(self.dir / "flags.npy") if (self.dir / "flags.npy").exists() else None  # uint8 [rows]
        if (self.dir / "strings.bin").exists():
            self._string_offsets = np.load(self.dir / "string_offsets.npy")
            self._strings = np.memmap(self.dir / "strings.bin", np.uint8, "r")

    def __len__(self) -> int:
        return self.meta["rows"]

    def seq(self, s: int) -> np.ndarray:
        return self.ids[self.offsets[s]:self.offsets[s + 1]]

    def strings(self, r: int) -> list[str]:
        a, b = self._string_offsets[r], self._string_offsets[r + 1]
        return json.loads(self._strings[a:b].tobytes().decode())


def _open_whole(target: Path) -> TokenCache | None:
    """The cache in `target` if it is whole; a damaged one (cut files, bad metadata) is removed so that it is built
    again: it is derived data, rebuilt exactly from the jsonl."""
    try:
        cache = TokenCache(target)
        itemsize = np.dtype(cache.meta["dtype"]).itemsize
        if (target / "ids.bin").stat().st_size != int(cache.offsets[-1]) * itemsize or \
                len(cache.offsets) != cache.meta["rows"] * cache.per_row + 1:
            raise ValueError("its files disagree in length")
        return cache
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        print(f"warning: token cache {target} is damaged ({e}); rebuilding it", file=sys.stderr)
        shutil.rmtree(target, ignore_errors=True)
        return None


def cache_key(digest: str, tokenizer, kind: str, max_seq_len: int, skip_bad_lines: bool) -> str:
    parts = f"v{CACHE_VERSION}|{digest}|{tokenizer.fingerprint}|{kind}|{max_seq_len}|{skip_bad_lines}"
    return hashlib.sha256(parts.encode()).hexdigest()[:24]


def load_or_build(path, tokenizer, kind: str, row_texts: Callable, per_row: int, max_seq_len: int, *,
                  truncate_left: bool = False, flagged: bool = False, skip_bad_lines: bool = False, cache_dir=None,
                  workers: int | None = None) -> TokenCache:
    """The cache of `path` for this tokenizer and format, built first if there is none (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, 0, "no such file")
    key = cache_key(file_digest(path), tokenizer, kind, max_seq_len, skip_bad_lines)
    target = Path(cache_dir or default_cache_dir()) / f"{path.stem}.{kind}.{key}"
    cache = _open_whole(target) if target.exists() else None
    if cache is None:
        job = Job(tokenizer, row_texts, per_row, max_seq_len, truncate_left,
                  np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32), flagged)
        build(path, target, job, skip_bad_lines=skip_bad_lines, workers=workers)
        cache = TokenCache(target)
    skipped = cache.meta["skipped"]
    if skipped:
        line, problem = cache.meta["first_bad"]
        print(f"warning: {path}: skipped {skipped} bad line{'s' * (skipped > 1)} "
              f"(first: line {line}: {problem})", file=sys.stderr)
    return cache


def build(path: Path, target: Path, job: Job, *, skip_bad_lines: bool, workers: int | None = None) -> None:
    """Tokenize `path` into the cache directory `target` (see the module doc)."""
    size = path.stat().st_size
    if workers is None:     # the backends already spread one batch over two threads: one process per two cores
        workers = max(1, min((os.cpu_count() or 1) // 2, 8)) if size >= PARALLEL_MIN_BYTES else 1
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lengths, string_sizes, flags = [], [], []
    rows = skipped = truncated = 0
    first_bad = None
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"tokenizing {path.name}", leave=False,
               mininterval=0.5, disable=size < CHUNK_BYTES)
    pool = None
    try:
        if workers > 1:
            # spawn, not fork: the parent may already run JAX's threads, which a fork would copy half-way.
            pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (job,))
            results = pool.imap(_tokenize_in_worker, read_chunks(path, CHUNK_BYTES))
        else:
            results = (tokenize_item(job, item) for item in read_chunks(path, CHUNK_BYTES))
        with open(tmp / "ids.bin", "wb") as ids_f, open(tmp / "strings.bin", "wb") as str_f:
            for nbytes, part in results:
                if part.errors:
                    if not skip_bad_lines:
                        line, problem = part.errors[0]
                        raise DataError(path, line, problem)
                    first_bad = first_bad or part.errors[0]
                    skipped += len(part.errors)
                ids_f.write(part.ids.tobytes())
                lengths.append(part.lengths)
                for s in part.strings:
                    str_f.write(s)
                    string_sizes.append(len(s))
                flags.extend(part.flags)
                rows += len(part.lengths) // job.per_row
                truncated += part.truncated
                bar.update(nbytes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    if rows == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        if first_bad:
            raise DataError(path, first_bad[0], f"no valid rows: all {skipped} lines are bad (first: {first_bad[1]})")
        raise DataError(path, 1, "empty file: no JSON rows")
    lengths = np.concatenate(lengths)
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    if string_sizes:
        np.save(tmp / "string_offsets.npy", np.concatenate([[0], np.cumsum(string_sizes)]).astype(np.int64))
    else:
        (tmp / "strings.bin").unlink()
    if job.flagged:
        np.save(tmp / "flags.npy", np.asarray(flags, np.uint8))
    meta = {"version": CACHE_VERSION, "source": str(path), "bytes": size, "rows": rows, "per_row": job.per_row,
            "tokens": int(lengths.sum()), "dtype": job.dtype.name, "max_seq_len": job.max_seq_len,
            "truncated": truncated, "skipped": skipped, "first_bad": first_bad,
            "tokenizer": job.tokenizer.name}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, target)
    except OSError:                 # another process finished the same cache first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
