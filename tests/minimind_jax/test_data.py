"""The data sets (SPEC.md §3: X, Y, masks, padding) and the loader (order, resume, process sharding)."""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minimind_jax.data import (SAMPLE_DIR, DPODataset, PretrainDataset, RLAIFDataset, SFTDataset, assistant_mask,
                               batch_rows, epoch_permutation, iterate_batches, num_batches)
from minimind_jax.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(*turns):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


# ---------------------------------------------------------------------- pretrain
def test_pretrain_shift_pad_and_truncate(tok, tmp_path):
    texts = ["short", "a much longer line of text that will certainly be cut at max_seq_len " * 3, "中文 text"]
    ds = PretrainDataset(write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in texts]), tok, 16, cache_dir=tmp_path)
    b = ds.batch(np.array([2, 0, 1]))
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "input_ids": ((3, 15), np.int32), "labels": ((3, 15), np.int32), "loss_mask": ((3, 15), np.float32)}
    for row, text in zip(range(3), [texts[2], texts[0], texts[1]]):
        ids = (tok.encode(text)[:16] + [0] * 16)[:16]
        np.testing.assert_array_equal(b["input_ids"][row], ids[:-1])
        np.testing.assert_array_equal(b["labels"][row], ids[1:])
        np.testing.assert_array_equal(b["loss_mask"][row], (np.array(ids) != 0)[1:])
    assert b["loss_mask"][2].all()                                            # truncated row: no padding


# ---------------------------------------------------------------------- SFT mask
CONTENT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(
    lambda s: "<|im_start|>" not in s and "<|im_end|>" not in s)


@given(turns=st.lists(CONTENT, min_size=1, max_size=6), system=st.one_of(st.none(), CONTENT))
def test_sft_mask_trains_exactly_the_assistant_turns(tok, turns, system):
    """Masked targets = every assistant content, its <|im_end|> and the newline after it; nothing else."""
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + chat(*turns)
    ids = np.array(tok.encode(tok.apply_chat_template(msgs)) + [0] * 4, np.int32)            # [L], padded
    mask = assistant_mask(ids, tok.encode("<|im_start|>assistant"), tok.encode("<|im_end|>"))
    loss_mask, labels = mask[1:], ids[1:]
    expected = "".join(m["content"] + "<|im_end|>\n" for m in msgs if m["role"] == "assistant")
    assert tok.decode(labels[loss_mask == 1]) == expected


def test_sft_mask_reference_rule_on_truncation():
    """Hand-made ids (start run [1, 7], end [2]): spans start two tokens after the run and end one past <|im_end|>;
    an unterminated span runs to the end."""
    ids = np.array([1, 5, 9, 2, 9, 1, 7, 9, 4, 4, 2, 9, 1, 7, 9, 4, 4])
    np.testing.assert_array_equal(assistant_mask(ids, [1, 7], [2]),
                                  [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1])
    assert not assistant_mask(ids[:7], [1, 7], [2]).any()


def test_sft_batch(tok, tmp_path):
    rows = [{"conversations": chat("1+1?", "2")},
            {"conversations": [{"role": "system", "content": "S"}] + chat("hi", "hello", "more", "ok")}]
    ds = SFTDataset(write_jsonl(tmp_path / "s.jsonl", rows), tok, 64, cache_dir=tmp_path)
    b = ds.batch([0, 1])
    assert b["input_ids"].shape == (2, 63) and b["loss_mask"].dtype == np.float32
    assert tok.decode(b["labels"][0][b["loss_mask"][0] == 1]) == "2<|im_end|>\n"
    assert tok.decode(b["labels"][1][b["loss_mask"][1] == 1]) == "hello<|im_end|>\nok<|im_end|>\n"
    full = tok.encode(tok.apply_chat_template(rows[1]["conversations"]))
    np.testing.assert_array_equal(b["input_ids"][1][:len(full) - 1], full[:-1])


def test_dpo_batch_is_two_sft_batches(tok, tmp_path):
    rows = [{"chosen": chat("q", "good answer"), "rejected": chat("q", "bad")},
            {"chosen": chat("你好", "你好！"), "rejected": chat("你好", "走开")}]
    ds = DPODataset(write_jsonl(tmp_path / "d.jsonl", rows), tok, 32, cache_dir=tmp_path)
    chosen = SFTDataset(write_jsonl(tmp_path / "c.jsonl", [{"conversations": r["chosen"]} for r in rows]), tok, 32,
                        cache_dir=tmp_path).batch([1, 0])
    rejected = SFTDataset(write_jsonl(tmp_path / "r.jsonl", [{"conversations": r["rejected"]} for r in rows]), tok,
                          32, cache_dir=tmp_path).batch([1, 0])
    b = ds.batch([1, 0])
    assert sorted(b) == sorted([f"{side}_{k}" for side in ("chosen", "rejected")
                                for k in ("input_ids", "labels", "loss_mask")])
    for k in ("input_ids", "labels", "loss_mask"):
        np.testing.assert_array_equal(b[f"chosen_{k}"], chosen[k])
        np.testing.assert_array_equal(b[f"rejected_{k}"], rejected[k])


def test_rlaif_left_pad_truncate_and_answers(tok, tmp_path):
    long_q = "word " * 200
    rows = [{"conversations": chat("What is 3 + 4?", "7")},
            {"conversations": chat(long_q, "x")},
            {"conversations": chat("a", "b", "c", "d")},
            {"conversations": [{"content": "open prompt, no answer"}]}]
    ds = RLAIFDataset(write_jsonl(tmp_path / "rl.jsonl", rows), tok, 40, cache_dir=tmp_path)
    b = ds.batch(np.arange(4))
    assert b["prompt_ids"].shape == b["prompt_mask"].shape == (4, 40) and b["index"].tolist() == [0, 1, 2, 3]
    assert b["answers"] == ["7", "x", "d", ""]
    assert b["prompts"][2] == tok.apply_chat_template(chat("a", "b", "c"), add_generation_prompt=True)
    gen = tok.encode("<|im_start|>assistant\n")
    for i, prompt in enumerate(b["prompts"]):
        ids = tok.encode(prompt)[-40:]
        n = len(ids)
        assert b["prompt_mask"][i].tolist() == [0] * (40 - n) + [1] * n               # left padded
        assert b["prompt_ids"][i, 40 - n:].tolist() == ids and not b["prompt_ids"][i, :40 - n].any()
        assert b["prompt_ids"][i, -len(gen):].tolist() == gen                          # generation prompt survives
    assert b["prompt_mask"][1].all()                                                   # the long one was cut


def test_sample_files_load(tok, cache_dir):
    """Every default file parses with its stage's data set, and the math answers follow the documented shapes."""
    for cls, name, L in [(PretrainDataset, "pretrain", 64), (SFTDataset, "sft", 64), (SFTDataset, "lora_identity", 64),
                         (DPODataset, "dpo", 64), (SFTDataset, "reason", 64), (RLAIFDataset, "rlaif", 66)]:
        ds = cls(SAMPLE_DIR / f"{name}.jsonl", tok, L, cache_dir=cache_dir)
        assert len(ds) > 100 and ds.cache.meta["skipped"] == 0
    rl = RLAIFDataset(SAMPLE_DIR / "rlaif.jsonl", tok, 66, cache_dir=cache_dir)
    answers = rl.batch(np.arange(len(rl)))["answers"]
    numeric = [a for a in answers if a]
    assert len(numeric) > 0.9 * len(answers) and all(a.lstrip("-").isdigit() for a in numeric)
    assert sum(a.isdigit() and int(a) < 10 for a in numeric) > 500                   # plenty of very easy ones


# ---------------------------------------------------------------------- loader
class RowsDataset:
    """Stands in for a data set: its batch is the row indices it was asked for."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def batch(self, indices, epoch=0):
        return {"rows": np.asarray(indices)}


def test_epoch_permutation_is_a_pure_function():
    p = epoch_permutation(42, 3, 1000)
    np.testing.assert_array_equal(p, epoch_permutation(42, 3, 1000))
    assert sorted(p.tolist()) == list(range(1000))
    assert not np.array_equal(p, epoch_permutation(42, 4, 1000))
    assert not np.array_equal(p, epoch_permutation(43, 3, 1000))


def test_num_batches():
    assert [num_batches(n, 4) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    with pytest.raises(ValueError):
        num_batches(0, 4)


@given(n=st.integers(1, 50), batch=st.integers(1, 12), start=st.integers(0, 20), seed=st.integers(0, 3))
def test_resume_is_exact_and_every_row_is_seen(n, batch, start, seed):
    ds = RowsDataset(n)
    full = [(b, x["rows"].tolist()) for b, x in iterate_batches(ds, batch, seed=seed, epoch=1)]
    resumed = [(b, x["rows"].tolist()) for b, x in iterate_batches(ds, batch, seed=seed, epoch=1, start=start)]
    assert full[:start] + resumed == full
    assert len(full) == num_batches(n, batch) and all(len(rows) == batch for _, rows in full)
    assert {r for _, rows in full for r in rows} == set(range(n))


@given(n=st.integers(1, 40), per_process=st.integers(1, 5), processes=st.integers(1, 4), seed=st.integers(0, 3))
def test_positions_partition_each_global_batch(n, per_process, processes, seed):
    """Processes that read disjoint positions (here interleaved, as a sharding may place them) together read
    exactly each global batch."""
    ds, batch = RowsDataset(n), per_process * processes
    whole = list(iterate_batches(ds, batch, seed=seed, epoch=0))
    shards = [list(iterate_batches(ds, batch, seed=seed, epoch=0, positions=np.arange(p, batch, processes)))
              for p in range(processes)]
    for b, (_, global_batch) in enumerate(whole):
        parts = [shards[p][b][1]["rows"] for p in range(processes)]
        assert all(len(part) == per_process for part in parts)
        np.testing.assert_array_equal(np.stack(parts, axis=1).reshape(-1), global_batch["rows"])


def test_loader_errors():
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        next(iterate_batches(RowsDataset(10), 4, seed=0, epoch=0, positions=np.array([0, 4])))


def test_iterate_real_dataset(tok, tmp_path):
    rows = [{"text": f"row {i}"} for i in range(7)]
    ds = PretrainDataset(write_jsonl(tmp_path / "p.jsonl", rows), tok, 8, cache_dir=tmp_path)
    perm = epoch_permutation(5, 0, 7)
    for b, batch in iterate_batches(ds, 4, seed=5, epoch=0):
        np.testing.assert_array_equal(batch["input_ids"], ds.batch(perm[(b * 4 + np.arange(4)) % 7])["input_ids"])
    with pytest.raises(IndexError):
        ds.batch([7])


def test_sample_rl_questions_are_not_in_the_training_files():
    """The verifiable RL prompts are held out: none of them is a question of sft, reason or dpo."""
    def questions(name, key="conversations"):
        with open(SAMPLE_DIR / f"{name}.jsonl", encoding="utf-8") as f:
            return {json.loads(line)[key][0]["content"] for line in f}
    rl = questions("rlaif")
    for name, key in (("sft", "conversations"), ("reason", "conversations"), ("dpo", "chosen")):
        assert not rl & questions(name, key), name
