"""The four MiniMind data sets (SPEC.md §3): rows of a jsonl file -> fixed-shape numpy batches.

Every data set tokenizes its file once into a cache (`cache.py`) and builds batches from it on demand:
`ds = SFTDataset(path, tokenizer, max_seq_len)`, `len(ds)` rows, `ds.batch(indices)` a dict of arrays.
Pretrain and SFT give `input_ids` X, `labels` Y and `loss_mask` of shape [B, L-1] (L = max_seq_len):
`X = ids[:-1]`, `Y = ids[1:]`, `loss_mask = mask[1:]`, with `ids` truncated and right-padded with 0 to L.
"""
from pathlib import Path

import numpy as np

from minimind_jax.data import cache
from minimind_jax.data.jsonl import field, messages
from minimind_jax.tokenizer import apply_chat_template


# ---------------------------------------------------------------------- rows -> texts (run in worker processes)
def pretrain_texts(row: dict) -> tuple[list[str], list[str]]:
    return [field(row, "text", str, "pretraining text")], []


def sft_texts(row: dict) -> tuple[list[str], list[str]]:
    return [apply_chat_template(messages(row, "conversations"))], []


def dpo_texts(row: dict) -> tuple[list[str], list[str]]:
    return [apply_chat_template(messages(row, "chosen")), apply_chat_template(messages(row, "rejected"))], []


def rlaif_texts(row: dict) -> tuple[list[str], list[str]]:
    """Turns alternate user/assistant by position (the reference ignores "role" here). With an even number of
    turns the last is the reference answer and the rest the prompt; with an odd number all are prompt, no answer."""
    turns = messages(row, "conversations", check_roles=False)
    chat = [{"role": "user" if i % 2 == 0 else "assistant", "content": t["content"]} for i, t in enumerate(turns)]
    answer = ""
    if len(chat) % 2 == 0:
        chat, answer = chat[:-1], chat[-1]["content"]
    prompt = apply_chat_template(chat, add_generation_prompt=True)
    return [prompt], [prompt, answer]


# ---------------------------------------------------------------------- masks
def assistant_mask(ids: np.ndarray, start: list[int], end: list[int], skip: int = 1, tail: int = 1) -> np.ndarray:
    """The reference's SFT mask of one row of token ids [L] (before the shift).

    For each occurrence of the token run `start` (`<|im_start|>assistant`) the positions from `skip` tokens after
    it (the newline) through the first following `end` run (`<|im_end|>`) and `tail` tokens beyond are 1, clipped
    at L; the search resumes after that `end`. With no `end`, the span runs to L. (MiniMind-3's runs include the
    newlines, `<|im_start|>assistant\\n` and `<|im_end|>\\n`, with skip = tail = 0.)
    """
    L, ks, ke = len(ids), len(start), len(end)
    mask = np.zeros(L, np.int32)
    is_start = _run_starts(ids, start)                     # [L] bool
    is_end = _run_starts(ids, end)
    ends = np.flatnonzero(is_end)
    i = 0
    for s in np.flatnonzero(is_start):
        if s < i:                                          # inside the span of the previous match
            continue
        after = ends[ends >= s + ks]
        e = int(after[0]) if len(after) else L
        mask[s + ks + skip:min(e + ke + tail, L)] = 1
        i = e + ke if len(after) else L
    return mask


def _run_starts(ids: np.ndarray, run: list[int]) -> np.ndarray:
    """[L] bool: where the token run `run` begins in ids."""
    hit = np.zeros(len(ids), bool)
    k = len(run)
    if len(ids) >= k:
        windows = np.lib.stride_tricks.sliding_window_view(ids, k)        # [L-k+1, k]
        hit[:len(windows)] = (windows == np.asarray(run)).all(axis=1)
    return hit


# ---------------------------------------------------------------------- data sets
class _JsonlDataset:
    """Common part: the cache, `len`, and right-padded id matrices. `batch(indices, epoch)` takes the epoch so that
    every data set is read alike; these draw nothing at random, so their batches are the same every epoch."""
    kind: str
    row_texts = None
    per_row = 1
    truncate_left = False
    flagged = False         # the rows carry flags (see cache.Job)
    reserved = 0            # ids the batch adds around each cached sequence, so the cache keeps L - reserved

    def __init__(self, path, tokenizer, max_seq_len: int, *, skip_bad_lines: bool = False, cache_dir=None,
                 workers: int | None = None):
        if max_seq_len < 2 + self.reserved:
            raise ValueError(f"max_seq_len must be at least {2 + self.reserved}, not {max_seq_len}")
        self.path, self.tokenizer, self.max_seq_len = Path(path), tokenizer, max_seq_len
        self.cache = cache.load_or_build(self.path, tokenizer, self.kind, type(self).row_texts, self.per_row,
                                         max_seq_len - self.reserved, truncate_left=self.truncate_left,
                                         flagged=self.flagged, skip_bad_lines=skip_bad_lines, cache_dir=cache_dir,
                                         workers=workers)

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def fingerprint(self) -> str:
        """What the data is: the key of its token cache (the file's content, the tokenizer, the format, the length),
        for a trainer to tell whether a checkpoint was written on the same data."""
        return self.cache.dir.name.rsplit(".", 1)[-1]

    def padded(self, indices, which: int = 0) -> np.ndarray:
        """int32 [B, L]: sequence `which` of each row, right-padded with the pad id."""
        rows = self._rows(indices)
        out = np.full((len(rows), self.max_seq_len), self.tokenizer.pad_id, np.int32)
        for b, r in enumerate(rows):
            seq = self.cache.seq(r * self.per_row + which)
            out[b, :len(seq)] = seq
        return out

    def _rows(self, indices) -> np.ndarray:
        rows = np.asarray(indices, np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{self.path}: row index out of range [0, {len(self)})")
        return rows

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, rows={len(self)}, max_seq_len={self.max_seq_len})"


def shifted(ids: np.ndarray, mask: np.ndarray, prefix: str = "") -> dict:
    """X, Y and the loss mask of right-padded ids [B, L] and their mask [B, L]: all [B, L-1]."""
    return {f"{prefix}input_ids": ids[:, :-1], f"{prefix}labels": ids[:, 1:],
            f"{prefix}loss_mask": mask[:, 1:].astype(np.float32)}


class PretrainDataset(_JsonlDataset):
    """`{"text": ...}` rows; loss on every non-pad target: `loss_mask = (ids != pad)[1:]`."""
    kind, row_texts = "pretrain", staticmethod(pretrain_texts)

    def batch(self, indices, epoch: int = 0) -> dict:
        ids = self.padded(indices)                                           # [B, L]
        return shifted(ids, ids != self.tokenizer.pad_id)


class _ChatDataset(_JsonlDataset):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        tok = self.tokenizer
        self.assistant_start = tok.encode("<|im_start|>assistant")           # reference BPE: 4 ids, ours: 2
        self.assistant_end = tok.encode("<|im_end|>")

    def masked(self, indices, which: int = 0, prefix: str = "") -> dict:
        ids = self.padded(indices, which)                                    # [B, L]
        mask = np.stack([assistant_mask(row, self.assistant_start, self.assistant_end) for row in ids])
        return shifted(ids, mask, prefix)


class SFTDataset(_ChatDataset):
    """`{"conversations": [{"role", "content"}, ...]}`: the chat template; loss on assistant turns only."""
    kind, row_texts = "sft", staticmethod(sft_texts)

    def batch(self, indices, epoch: int = 0) -> dict:
        return self.masked(indices)


class DPODataset(_ChatDataset):
    """`{"chosen": [...], "rejected": [...]}`: both templated, each with the SFT mask; keys prefixed by side."""
    kind, row_texts, per_row = "dpo", staticmethod(dpo_texts), 2

    def batch(self, indices, epoch: int = 0) -> dict:
        return {**self.masked(indices, 0, "chosen_"), **self.masked(indices, 1, "rejected_")}


class RLAIFDataset(_JsonlDataset):
    """Prompts for sampling: the templated prompt with the generation prompt, LEFT-padded and cut from the left to
    P = max_seq_len (so `<|im_start|>assistant\\n` survives), its mask, the row index, and the texts of the prompt
    and the reference answer ('' where the row has none)."""
    kind, row_texts, truncate_left = "rlaif", staticmethod(rlaif_texts), True

    def batch(self, indices, epoch: int = 0) -> dict:
        rows = self._rows(indices)
        P = self.max_seq_len
        prompt_ids = np.full((len(rows), P), self.tokenizer.pad_id, np.int32)      # [B, P]
        prompt_mask = np.zeros((len(rows), P), np.int32)
        prompts, answers = [], []
        for b, r in enumerate(rows):
            seq = self.cache.seq(r)
            prompt_ids[b, P - len(seq):] = seq
            prompt_mask[b, P - len(seq):] = 1
            prompt, answer = self.cache.strings(r)
            prompts.append(prompt)
            answers.append(answer)
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "index": rows.astype(np.int32),
                "prompts": prompts, "answers": answers}


__all__ = ["PretrainDataset", "SFTDataset", "DPODataset", "RLAIFDataset", "assistant_mask"]
