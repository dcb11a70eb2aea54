"""MiniMind-3 data sets: the upstream goldens (ids, labels, masks, prompts), the random rules, and bad rows."""
import json

import numpy as np
import pytest

from minimind_jax.data import (SAMPLE3_DIR, AgentDataset3, DataError, DPODataset3, PretrainDataset,
                               PretrainDataset3, RLAIFDataset3, SFTDataset3, draws, iterate_batches)
from minimind_jax.data.chat3 import SYSTEM_PROMPTS, conversation
from minimind_jax.template3 import EMPTY_THINK, render



from tests.minimind_jax.test_tokenizer3 import gold, tok  # noqa: E402,F401  (the same fixtures)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def unshifted(batch, prefix=""):
    """(ids, labels) [B, L] as the reference returns them, rebuilt from X, Y and the loss mask."""
    x, y, m = (batch[prefix + k] for k in ("input_ids", "labels", "loss_mask"))
    ids = np.concatenate([x[:, :1], y], axis=1)
    return ids, np.concatenate([np.full_like(x[:, :1], -100), np.where(m == 1, y, -100)], axis=1)


def chat(*turns):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


# ---------------------------------------------------------------------- goldens
@pytest.mark.parametrize("ratio, variant", [(0.0, "removed"), (1.0, "kept")])
def test_sft_goldens(tok, gold, tmp_path, ratio, variant):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": c["messages"]} for c in gold["chat"]])
    ds = SFTDataset3(path, tok, gold["sft_max_length"], add_system_ratio=0, empty_think_ratio=ratio, cache_dir=tmp_path)
    batch = ds.batch(np.arange(len(ds)), epoch=3)
    ids, labels = unshifted(batch)
    for case, row_ids, row_labels in zip(gold["chat"], ids, labels):
        assert row_ids.tolist() == case[f"sft_{variant}_input_ids"], case["name"]
        assert row_labels.tolist()[1:] == case[f"sft_{variant}_labels"][1:], case["name"]
        assert tok.decode(row_ids[row_ids != tok.pad_id]) == case[f"sft_{variant}_text"]
    assert all(case[f"sft_{variant}_labels"][0] == -100 for case in gold["chat"])   # what the shift cannot carry


def test_sft_truncated_golden(tok, gold, tmp_path):
    g = gold["sft_truncated"]
    case = next(c for c in gold["chat"] if c["name"] == g["case"])
    path = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": case["messages"]}])
    ds = SFTDataset3(path, tok, g["max_length"], add_system_ratio=0, empty_think_ratio=0, cache_dir=tmp_path)
    ids, labels = ds.ids_and_mask([0])
    assert ids[0].tolist() == g["input_ids"]
    assert np.where(labels[0] == 1, ids[0], -100).tolist() == g["labels"]


def test_pretrain_goldens_share_the_minimind2_cache(tok, gold, tmp_path):
    for case in gold["pretrain"]:
        path = write_jsonl(tmp_path / "p.jsonl", [{"text": case["text"]}])
        ds = PretrainDataset3(path, tok, case["max_length"], cache_dir=tmp_path)
        ids, labels = unshifted(ds.batch([0]))
        assert ids[0].tolist() == case["input_ids"]
        assert labels[0].tolist()[1:] == case["labels"][1:] and case["labels"][0] == case["input_ids"][0]
        assert PretrainDataset(path, tok, case["max_length"] - 2, cache_dir=tmp_path).cache.dir == ds.cache.dir


def test_dpo_golden(tok, gold, tmp_path):
    g = gold["dpo"]
    # The golden keeps the row only as ids; its two sides are these messages.
    question = [{"role": "user", "content": "1+1?"}]
    row = {"chosen": question + [{"role": "assistant", "content": "2"}],
           "rejected": question + [{"role": "assistant", "content": "3"}]}
    ds = DPODataset3(write_jsonl(tmp_path / "dpo.jsonl", [row]), tok, g["max_length"], empty_think_ratio=0,
                     cache_dir=tmp_path)
    b = ds.batch([0])
    for side in ("chosen", "rejected"):
        assert b[f"{side}_input_ids"][0].tolist() == g[f"x_{side}"]
        assert b[f"{side}_labels"][0].tolist() == g[f"y_{side}"]
        assert b[f"{side}_loss_mask"][0].tolist() == g[f"mask_{side}"]


def test_rlaif_goldens(tok, gold, tmp_path):
    path = write_jsonl(tmp_path / "rlaif.jsonl", [{"conversations": chat("你好", "")}])
    for case in gold["rlaif"]:
        ds = RLAIFDataset3(path, tok, 24, add_system_ratio=0, thinking_ratio=case["thinking_ratio"],
                           cache_dir=tmp_path)
        b = ds.batch([0])
        assert [b["prompts"][0], b["answers"][0]] == [case["item"]["prompt"], case["item"]["answer"]]
        ids = tok.encode(case["item"]["prompt"])
        assert b["prompt_ids"][0, -len(ids):].tolist() == ids and b["prompt_mask"][0].sum() == len(ids)


def test_agent_golden(tok, gold, tmp_path):
    g = gold["agent_dataset"]
    ds = AgentDataset3(write_jsonl(tmp_path / "agent.jsonl", [g["row"]]), tok, 512, thinking_ratio=0,
                       cache_dir=tmp_path)
    b = ds.batch([0])
    assert (b["messages"][0], b["tools"][0], b["gt"][0]) == (g["item"]["messages"], g["item"]["tools"], g["item"]["gt"])
    rollout = gold["agent_rollout"]                            # the same prompt: the rollout's first context
    assert rollout["messages_in"] == g["item"]["messages"]
    n = int(b["prompt_mask"][0].sum())
    assert b["prompt_ids"][0, -n:].tolist() == rollout["prompt_ids"]
    assert tok.encode(b["prompts"][0]) == rollout["prompt_ids"] and not b["open_thinking"][0]


# ---------------------------------------------------------------------- the random rules
def rule_rows(n):
    """Rows without a system message (a prompt may be injected), each with an empty think block."""
    rows = [{"conversations": chat(f"q{i}", f"a{i}")} for i in range(n)]
    rows[0]["conversations"].insert(0, {"role": "system", "content": "own"})
    tools = json.dumps([{"type": "function", "function": {"name": "f"}}])
    rows[1]["conversations"].insert(0, {"role": "system", "content": "", "tools": tools})
    return rows


def sft_variants(messages, tools=None):
    """Every text the reference can make of one conversation: each system prompt or none, think kept or not."""
    systems = [[]] if tools or messages[0]["role"] == "system" else [[]] + [
        [{"role": "system", "content": p}] for p in SYSTEM_PROMPTS]
    texts = [render(s + messages, tools) for s in systems]
    return {t.replace(EMPTY_THINK, "") for t in texts} | set(texts)


def test_sft_draws_are_exact_variants_at_the_reference_rates(tok, tmp_path):
    rows = rule_rows(600)
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    ds = SFTDataset3(path, tok, 256, seed=7, cache_dir=tmp_path)                      # the reference's rates
    ids, _ = ds.ids_and_mask(np.arange(len(ds)), epoch=0)
    texts = [tok.decode(r[r != tok.pad_id]) for r in ids]
    for row, text, r in zip(rows, texts, ids):
        assert text in sft_variants(*conversation(row, "conversations"))
        assert r[r != tok.pad_id].tolist() == tok.encode(text)                        # ids of the whole text
    injected = [t.startswith("<|im_start|>system\n") for t in texts[2:]]
    kept = [EMPTY_THINK in t for t in texts]
    assert abs(np.mean(injected) - 0.2) < 0.06 and abs(np.mean(kept) - 0.2) < 0.06
    assert texts[0].startswith("<|im_start|>system\nown") and "# Tools" in texts[1]   # never a second system
    picked = {t.split("\n")[1].split("<|im_end|>")[0] for t in texts[2:] if t.startswith("<|im_start|>system")}
    assert picked == set(SYSTEM_PROMPTS)


def test_draws_are_a_function_of_seed_epoch_and_row(tok, tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", rule_rows(64))
    ds = SFTDataset3(path, tok, 64, seed=1, cache_dir=tmp_path)
    again = SFTDataset3(path, tok, 64, seed=1, cache_dir=tmp_path)
    rows = np.arange(64)
    whole = ds.batch(rows, epoch=2)["input_ids"]
    np.testing.assert_array_equal(again.batch(rows[::-1], epoch=2)["input_ids"], whole[::-1])   # any batch order
    np.testing.assert_array_equal(ds.batch([5], epoch=2)["input_ids"][0], whole[5])
    assert not np.array_equal(ds.batch(rows, epoch=3)["input_ids"], whole)                       # a new epoch
    other = SFTDataset3(path, tok, 64, seed=2, cache_dir=tmp_path)
    assert not np.array_equal(other.batch(rows, epoch=2)["input_ids"], whole)                    # a new seed
    for b, batch in iterate_batches(ds, 16, seed=9, epoch=2):                                  # the loader's epoch
        order = np.random.default_rng([9, 2]).permutation(64)[b * 16:(b + 1) * 16]
        np.testing.assert_array_equal(batch["input_ids"], whole[order])


def test_ratio_zero_and_one_are_deterministic(tok, tmp_path):
    rows = rule_rows(40)
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    for ratio, has_think in ((0.0, False), (1.0, True)):
        ds = SFTDataset3(path, tok, 256, seed=3, add_system_ratio=0, empty_think_ratio=ratio, cache_dir=tmp_path)
        for epoch in range(3):
            ids = ds.batch(np.arange(40), epoch=epoch)["input_ids"]
            texts = [tok.decode(r) for r in ids]
            assert all((EMPTY_THINK in t) == has_think for t in texts)
            assert not any(t.startswith("<|im_start|>system") for t in texts[2:])


def test_dpo_sides_draw_independently(tok, tmp_path):
    rows = [{"chosen": chat(f"q{i}", "yes"), "rejected": chat(f"q{i}", "no")} for i in range(300)]
    ds = DPODataset3(write_jsonl(tmp_path / "dpo.jsonl", rows), tok, 40, seed=0, empty_think_ratio=0.5,
                     cache_dir=tmp_path)
    b = ds.batch(np.arange(300))
    kept = {side: np.array([25 in r for r in b[f"{side}_input_ids"]]) for side in ("chosen", "rejected")}
    assert 0.4 < kept["chosen"].mean() < 0.6 and 0.4 < kept["rejected"].mean() < 0.6
    assert 0.35 < (kept["chosen"] != kept["rejected"]).mean() < 0.65


def test_rlaif_thinking_rate_system_prompts_and_answers(tok, tmp_path):
    rows = [{"conversations": chat(f"question {i}", f"{i}")} for i in range(400)]
    rows[0]["conversations"] = chat("only a question")
    ds = RLAIFDataset3(write_jsonl(tmp_path / "r.jsonl", rows), tok, 48, seed=5, cache_dir=tmp_path)
    b = ds.batch(np.arange(400))
    opened = np.array([p.endswith("<think>\n") for p in b["prompts"]])
    assert abs(opened.mean() - 0.5) < 0.08
    assert abs(np.mean([p.startswith("<|im_start|>system") for p in b["prompts"]]) - 0.2) < 0.06
    for p, ids, mask in zip(b["prompts"], b["prompt_ids"], b["prompt_mask"]):
        assert tok.encode(p)[-48:] == ids[mask == 1].tolist()
    assert b["answers"][:3] == ["", "1", "2"] and "question 1" in b["prompts"][1]
    short = RLAIFDataset3(ds.path, tok, 8, seed=5, cache_dir=tmp_path).batch([1, 2])         # cut from the left
    np.testing.assert_array_equal(short["prompt_ids"], b["prompt_ids"][1:3, -8:])


def test_uniform_streams_are_uniform_and_independent():
    rows = np.arange(20000)
    a, b = draws.uniform(0, 0, rows, 1), draws.uniform(0, 0, rows, 2)
    assert ((a >= 0) & (a < 1)).all() and abs(a.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    np.testing.assert_array_equal(np.bincount(draws.choice(0, 0, rows, 3, 10), minlength=10) > 1800, True)


# ---------------------------------------------------------------------- bad rows
BAD = [
    ("sft", {"conversations": [{"role": "robot", "content": "x"}]}, "conversations[0]: role 'robot' is not one of"),
    ("sft", {"conversations": [{"role": "user", "content": 3}]}, 'conversations[0]: "content" must be a string'),
    ("sft", {"conversations": [{"role": "system", "content": "", "tools": "[{"}]},
     'conversations[0]: "tools" is not valid JSON'),
    ("sft", {"conversations": chat("q") + [{"role": "assistant", "content": "", "tool_calls": '{"name": "f"}'}]},
     'conversations[1]: "tool_calls" must be a list of objects'),
    ("sft", {"conversations": chat("q") + [{"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}]},
     'conversations[1]: tool_calls[0] has no "name"'),
    ("dpo", {"chosen": chat("q", "a")}, 'no "rejected" key'),
    ("agent", {"conversations": chat("q", "a")}, 'no "gt" key'),
    ("agent", {"conversations": chat("q"), "gt": ["1"]}, "\"conversations\" needs a prompt and a final answer"),
]
KINDS = {"sft": SFTDataset3, "dpo": DPODataset3, "agent": AgentDataset3, "rlaif": RLAIFDataset3}


@pytest.mark.parametrize("kind, row, problem", BAD)
def test_bad_rows_are_one_line_naming_file_and_line(tok, tmp_path, kind, row, problem):
    good = {"sft": {"conversations": chat("q", "a")}, "dpo": {"chosen": chat("q", "a"), "rejected": chat("q", "b")},
            "agent": {"conversations": chat("q", "a"), "gt": ["a"]}}[kind]
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(DataError) as e:
        KINDS[kind](path, tok, 64, cache_dir=tmp_path)
    assert str(e.value).startswith(f"{path}:3: {problem}") and "\n" not in str(e.value)


# ---------------------------------------------------------------------- the embedded sample
@pytest.mark.parametrize("name, kind", [("pretrain", PretrainDataset3), ("sft", SFTDataset3), ("dpo", DPODataset3),
                                        ("rlaif", RLAIFDataset3), ("agent", AgentDataset3)])
def test_sample3_files_load(tok, tmp_path_factory, name, kind):
    ds = kind(SAMPLE3_DIR / f"{name}.jsonl", tok, 256, cache_dir=tmp_path_factory.mktemp(name))
    assert len(ds) >= 200
    b = ds.batch(np.arange(8), epoch=0)
    masks = [v for k, v in b.items() if k.endswith("mask")]
    assert masks and all(m.sum() > 0 for m in masks)
