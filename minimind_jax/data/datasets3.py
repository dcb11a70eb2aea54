"""MiniMind-3's data sets: the same batches as MiniMind-2's (`datasets.py`), from the new row formats and template.

    ds = SFTDataset3(SAMPLE3_DIR / "sft.jsonl", Tokenizer.load(SAMPLE3_TOKENIZER_DIR), 340, seed=42)
    ds.batch(rows, epoch=0)        # input_ids, labels, loss_mask [B, 339]

- Pretrain: `[bos] + text ids + [eos]`, right-padded; loss on every non-pad target.
- SFT: the conversation in the MiniMind-3 template; loss from after each `<|im_start|>assistant\\n` through the
  next `<|im_end|>\\n` (the think block if kept, the content, the tool calls, `<|im_end|>` and its newline).
- DPO: both sides so, each with its own draw.
- RLAIF: the prompt (all messages but the last, then the generation prompt), left-padded; the last message's
  content is the reference answer when it is an assistant turn.
- Agent: like RLAIF with the tools of the system message, plus the messages, tools and `gt` list of each row.

The reference's random rules are kept, with its rates as defaults: a system prompt injected into conversations
without one (`add_system_ratio`), the empty think block `<think>\\n\\n</think>\\n\\n` dropped unless a coin says
keep (`empty_think_ratio`), the generation prompt's thinking opened (`thinking_ratio`). Rate 0 or 1 makes a rule
deterministic. Every draw is `draws.uniform(seed, epoch, row, stream)`: the same (seed, epoch, row) always gives
the same batch row, so resuming a run is exact. Each row's variants are tokenized once into the cache (see
`chat3.py`); a batch only picks between them.
"""
import json

import numpy as np

from minimind_jax.data import chat3, draws
from minimind_jax.data.chat3 import CAN_ADD_SYSTEM, HAS_EMPTY_THINK, REJECTED_EMPTY_THINK, SYSTEM_PROMPTS
from minimind_jax.data.datasets import _JsonlDataset, assistant_mask, pretrain_texts, shifted
from minimind_jax.data.jsonl import BadRow, field
from minimind_jax.template3 import ASSISTANT_START, EMPTY_THINK, OPEN_THINK, TURN_END, render

# Draw streams: one per decision, so that no two decisions share a coin.
ADD_SYSTEM, WHICH_SYSTEM, KEEP_THINK, KEEP_REJECTED_THINK, OPEN_THINKING = range(1, 6)


# ---------------------------------------------------------------------- rows -> texts (run in worker processes)
def sft_texts(row: dict) -> tuple[list[str], list[str], int]:
    """[the text, the text without empty think blocks ('' if it has none)], no strings, the row's flags."""
    messages, tools = chat3.conversation(row, "conversations")
    text = render(messages, tools)
    stripped, has_think = chat3.empty_think_variant(text)
    return [text, stripped], [], has_think | CAN_ADD_SYSTEM * chat3.may_add_system(row["conversations"])


def dpo_texts(row: dict) -> tuple[list[str], list[str], int]:
    """[chosen, chosen stripped, rejected, rejected stripped], as in `sft_texts`; no system prompt is injected."""
    texts, flags = [], 0
    for key, flag in (("chosen", HAS_EMPTY_THINK), ("rejected", REJECTED_EMPTY_THINK)):
        text = render(*chat3.conversation(row, key))
        stripped, has_think = chat3.empty_think_variant(text)
        texts += [text, stripped]
        flags |= flag * bool(has_think)
    return texts, [], flags


def rlaif_texts(row: dict) -> tuple[list[str], list[str], int]:
    """[the prompt without its generation prompt], [that text, the reference answer], the row's flags."""
    messages, tools = chat3.conversation(row, "conversations")
    body = render(messages[:-1], tools)
    last = messages[-1]
    answer = (last.get("content") or "") if last["role"] == "assistant" else ""
    return [body], [body, answer], CAN_ADD_SYSTEM * chat3.may_add_system(row["conversations"])


def agent_texts(row: dict) -> tuple[list[str], list[str]]:
    """[the prompt without its generation prompt], [that text, then messages, tools and gt as JSON]."""
    messages, tools = chat3.conversation(row, "conversations")
    if len(messages) < 2:
        raise BadRow('"conversations" needs a prompt and a final answer: at least 2 messages')
    gt = field(row, "gt", list, "the facts a correct final answer must contain")
    body = render(messages[:-1], tools)
    kept = [json.dumps(v, ensure_ascii=False) for v in (row["conversations"][:-1], tools, gt)]
    return [body], [body, *kept]


# ---------------------------------------------------------------------- data sets
def right_padded(seqs: list[np.ndarray], L: int, pad: int) -> np.ndarray:
    """int32 [B, L]: each sequence (at most L ids) followed by pads."""
    out = np.full((len(seqs), L), pad, np.int32)
    for b, s in enumerate(seqs):
        out[b, :len(s)] = s
    return out


def left_padded(seqs: list[np.ndarray], P: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) int32 [B, P]: the last P ids of each sequence, pads before."""
    ids, mask = np.full((len(seqs), P), pad, np.int32), np.zeros((len(seqs), P), np.int32)
    for b, s in enumerate(seqs):
        s = s[-P:]
        ids[b, P - len(s):], mask[b, P - len(s):] = s, 1
    return ids, mask


class PretrainDataset3(_JsonlDataset):
    """`{"text": ...}` rows as `[bos] + ids + [eos]`. The cache is MiniMind-2's pretrain cache of L - 2 ids."""
    kind, row_texts, reserved = "pretrain", staticmethod(pretrain_texts), 2

    def batch(self, indices, epoch: int = 0) -> dict:
        tok = self.tokenizer
        seqs = [np.concatenate([[tok.bos_id], self.cache.seq(r), [tok.eos_id]]) for r in self._rows(indices)]
        ids = right_padded(seqs, self.max_seq_len, tok.pad_id)                        # [B, L]
        return shifted(ids, ids != tok.pad_id)


class _Chat3Dataset(_JsonlDataset):
    """The random rules over cached variants: the row's text or its stripped twin, maybe after a system prompt."""
    flagged = True

    def __init__(self, path, tokenizer, max_seq_len: int, *, seed: int = 0, add_system_ratio: float = 0.2,
                 empty_think_ratio: float = 0.2, **kwargs):
        super().__init__(path, tokenizer, max_seq_len, **kwargs)
        self.seed, self.add_system_ratio, self.empty_think_ratio = seed, add_system_ratio, empty_think_ratio
        self.system_ids = [np.asarray(tokenizer.encode(chat3.system_block(p)), np.int32) for p in SYSTEM_PROMPTS]
        self.window = tokenizer.encode(ASSISTANT_START), tokenizer.encode(TURN_END)

    def uniform(self, rows: np.ndarray, epoch: int, stream: int) -> np.ndarray:
        return draws.uniform(self.seed, epoch, rows, stream)

    def system_prompts(self, rows: np.ndarray, epoch: int) -> list[int | None]:
        """Per row, the index into SYSTEM_PROMPTS of the prompt to inject, or None."""
        add = (self.cache.flags[rows] & CAN_ADD_SYSTEM).astype(bool)
        add &= self.uniform(rows, epoch, ADD_SYSTEM) < self.add_system_ratio
        which = draws.choice(self.seed, epoch, rows, WHICH_SYSTEM, len(SYSTEM_PROMPTS))
        return [int(w) if a else None for a, w in zip(add, which)]

    def sequences(self, rows: np.ndarray, epoch: int, side: int = 0) -> list[np.ndarray]:
        """The ids of each row after the random rules, cut to max_seq_len; side 1 is DPO's rejected one."""
        flag, stream = ((HAS_EMPTY_THINK, KEEP_THINK), (REJECTED_EMPTY_THINK, KEEP_REJECTED_THINK))[side]
        strip = (self.cache.flags[rows] & flag).astype(bool)
        strip &= self.uniform(rows, epoch, stream) > self.empty_think_ratio     # the reference keeps it on <=
        seqs = []
        for r, s, p in zip(rows, strip, self.system_prompts(rows, epoch)):
            seq = self.cache.seq(r * self.per_row + 2 * side + int(s))
            seqs.append(seq if p is None else np.concatenate([self.system_ids[p], seq])[:self.max_seq_len])
        return seqs

    def ids_and_mask(self, indices, epoch: int = 0, side: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(ids, label mask) int32 [B, L] before the shift: the reference's input_ids, and labels != -100."""
        ids = right_padded(self.sequences(self._rows(indices), epoch, side), self.max_seq_len, self.tokenizer.pad_id)
        start, end = self.window
        return ids, np.stack([assistant_mask(row, start, end, skip=0, tail=0) for row in ids])


class SFTDataset3(_Chat3Dataset):
    """`{"conversations": [{"role", "content", "reasoning_content", "tools", "tool_calls"}, ...]}`."""
    kind, row_texts, per_row = "sft3", staticmethod(sft_texts), 2

    def batch(self, indices, epoch: int = 0) -> dict:
        return shifted(*self.ids_and_mask(indices, epoch))


class DPODataset3(_Chat3Dataset):
    """`{"chosen": [...], "rejected": [...]}`: each side as in SFT, keys prefixed by side; no system injection."""
    kind, row_texts, per_row = "dpo3", staticmethod(dpo_texts), 4

    def __init__(self, path, tokenizer, max_seq_len: int, *, seed: int = 0, empty_think_ratio: float = 0.2,
                 **kwargs):
        super().__init__(path, tokenizer, max_seq_len, seed=seed, add_system_ratio=0.0,
                         empty_think_ratio=empty_think_ratio, **kwargs)

    def batch(self, indices, epoch: int = 0) -> dict:
        return {**shifted(*self.ids_and_mask(indices, epoch, 0), "chosen_"),
                **shifted(*self.ids_and_mask(indices, epoch, 1), "rejected_")}


class RLAIFDataset3(_Chat3Dataset):
    """Prompts for sampling, as MiniMind-2's RLAIFDataset: `prompt_ids`/`prompt_mask` [B, P] left-padded and cut
    from the left (the generation prompt survives), `index`, and the texts `prompts` and `answers`. The thinking
    of the generation prompt is open with probability `thinking_ratio`."""
    kind, row_texts, truncate_left = "rlaif3", staticmethod(rlaif_texts), True

    def __init__(self, path, tokenizer, max_seq_len: int, *, seed: int = 0, add_system_ratio: float = 0.2,
                 thinking_ratio: float = 0.5, **kwargs):
        super().__init__(path, tokenizer, max_seq_len, seed=seed, add_system_ratio=add_system_ratio, **kwargs)
        self.thinking_ratio = thinking_ratio
        self.generation = [ASSISTANT_START + t for t in (EMPTY_THINK, OPEN_THINK)]     # by open_thinking
        self.generation_ids = [np.asarray(tokenizer.encode(t), np.int32) for t in self.generation]

    def open_thinking(self, rows: np.ndarray, epoch: int) -> np.ndarray:
        """bool [B]: whose generation prompt opens the think block."""
        return self.uniform(rows, epoch, OPEN_THINKING) < self.thinking_ratio

    def prompts(self, rows: np.ndarray, epoch: int) -> dict:
        """The prompt ids, mask, texts and thinking draws of `rows`: [system prompt] + cached body + generation
        prompt (the cached body's first string is its text)."""
        seqs, texts = [], []
        think = self.open_thinking(rows, epoch)
        for r, p, t in zip(rows, self.system_prompts(rows, epoch), think):
            system = () if p is None else (self.system_ids[p],)
            seqs.append(np.concatenate([*system, self.cache.seq(r), self.generation_ids[int(t)]]))
            system_text = "" if p is None else chat3.system_block(SYSTEM_PROMPTS[p])
            texts.append(system_text + self.cache.strings(r)[0] + self.generation[int(t)])
        prompt_ids, prompt_mask = left_padded(seqs, self.max_seq_len, self.tokenizer.pad_id)
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "index": rows.astype(np.int32),
                "prompts": texts, "open_thinking": think}

    def batch(self, indices, epoch: int = 0) -> dict:
        rows = self._rows(indices)
        out = self.prompts(rows, epoch)
        del out["open_thinking"]            # the keys of MiniMind-2's RLAIF batches, no more
        return {**out, "answers": [self.cache.strings(r)[1] for r in rows]}


class AgentDataset3(RLAIFDataset3):
    """`{"conversations": [...], "gt": [...]}` for tool-using rollouts: the prompt as in RLAIFDataset3, rendered
    with the tools of the system message and never given a system prompt, plus per row `messages` (all but the
    last, as in the file), `tools` (decoded, or None), `gt`, and `open_thinking` (bool [B], the prompt's draw)."""
    kind, row_texts, flagged = "agent3", staticmethod(agent_texts), False

    def __init__(self, path, tokenizer, max_seq_len: int, *, seed: int = 0, thinking_ratio: float = 0.1, **kwargs):
        super().__init__(path, tokenizer, max_seq_len, seed=seed, add_system_ratio=0.0,
                         thinking_ratio=thinking_ratio, **kwargs)

    def system_prompts(self, rows: np.ndarray, epoch: int) -> list[None]:
        return [None] * len(rows)

    def batch(self, indices, epoch: int = 0) -> dict:
        rows = self._rows(indices)
        kept = [[json.loads(s) for s in self.cache.strings(r)[1:]] for r in rows]
        return {**self.prompts(rows, epoch), "messages": [k[0] for k in kept], "tools": [k[1] for k in kept],
                "gt": [k[2] for k in kept]}


__all__ = ["PretrainDataset3", "SFTDataset3", "DPODataset3", "RLAIFDataset3", "AgentDataset3"]
