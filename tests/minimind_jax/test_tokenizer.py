"""The tokenizer: exact round trips, special ids, the chat template, and parity with the reference's tokenizer."""
import json
import pickle

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minimind_jax.data import PretrainDataset, SFTDataset
from minimind_jax.tokenizer import DEFAULT_TOKENIZER_DIR, SPECIAL_TOKENS, TAG_TOKENS, Tokenizer, main


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


@pytest.fixture(scope="module")
def ref_tok():
    from tests.conftest import SHARED
    path = SHARED / "minimind_tokenizer"
    if not path.exists():
        pytest.skip("../shared/minimind_tokenizer not found")
    return Tokenizer.load(path)


# Any text (no lone surrogates: they are not encodable strings), and text built from the tricky parts on purpose.
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
PARTS = st.sampled_from(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</answer>", "<tool_call>", "\n",
                         "\n\n", " ", "   ", "\t", "\r\n", "\u2581", "\u3000", "😀", "👨‍👩‍👧", "中文", "床前明月光，",
                         "疑是地上霜。", "é", "e\u0301", "12345", "<", "|>", "\x00"])
TRICKY_TEXT = st.lists(st.one_of(PARTS, ANY_TEXT), max_size=10).map("".join)


@given(st.one_of(ANY_TEXT, TRICKY_TEXT))
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


@given(st.lists(TRICKY_TEXT, max_size=5))
def test_encode_batch_equals_encode(tok, texts):
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_special_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 6400
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.encode(t) == [i]
    tag_ids = [tok.encode(t) for t in TAG_TOKENS]
    assert all(len(ids) == 1 for ids in tag_ids), tag_ids
    assert len({ids[0] for ids in tag_ids}) == len(TAG_TOKENS)
    assert tok.reasoning_tag_ids() == sorted(ids[0] for ids in tag_ids[:4])


def test_special_tokens_in_text_and_skipping(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n")
    assert ids[0] == tok.bos_id and tok.eos_id in ids
    assert ids.count(tok.bos_id) == 1 and ids.count(tok.eos_id) == 1        # no BOS/EOS added
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi\n"
    assert tok.encode("") == []


def test_byte_fallback_for_unseen_characters(tok):
    rare = "𓀀"                                                   # an Egyptian hieroglyph: not in any sample text
    ids = tok.encode(rare)
    assert len(ids) == len(rare.encode()) and all(tok.id_to_piece(i).startswith("<0x") for i in ids)


def test_digits_are_split(tok):
    assert len(tok.encode("2025")) == 4


def test_chat_template(tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert tok.apply_chat_template(msgs) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n")
    assert tok.apply_chat_template(msgs[:1], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    system = [{"role": "system", "content": "Be brief."}] + msgs
    assert tok.apply_chat_template(system).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert tok.apply_chat_template(system).count("system") == 1


def test_chat_template_matches_reference_jinja(ref_tok, shared_path):
    """The reference's own template (tokenizer_config.json) rendered with jinja2, where jinja2 is installed."""
    jinja2 = pytest.importorskip("jinja2")
    config = json.loads(shared_path("minimind_tokenizer/tokenizer_config.json").read_text())
    template = jinja2.Environment().from_string(config["chat_template"])
    cases = [[{"role": "user", "content": "1+1?"}],
             [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
              {"role": "user", "content": "c"}],
             [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nx\n</think>\n<answer>\n1\n</answer>"},
              {"role": "system", "content": "late system"}]]
    for msgs in cases:
        for gen in (False, True):
            assert ref_tok.apply_chat_template(msgs, gen) == template.render(messages=msgs, add_generation_prompt=gen)


def test_reference_tokenizer_golden_parity(ref_tok, shared_path, tmp_path):
    """Template text, X, Y and loss_mask of the reference's SFT and pretrain data sets, element for element."""
    g = json.loads(shared_path("golden/data_minimind_tokenizer.json").read_text())
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"conversations": r["conversations"]}, ensure_ascii=False) + "\n"
                           for r in g["sft"]))
    batch = SFTDataset(sft, ref_tok, g["max_seq_len_sft"], cache_dir=tmp_path).batch(np.arange(len(g["sft"])))
    for i, row in enumerate(g["sft"]):
        assert ref_tok.apply_chat_template(row["conversations"]) == row["text"]
        np.testing.assert_array_equal(batch["input_ids"][i], row["X"])
        np.testing.assert_array_equal(batch["labels"][i], row["Y"])
        np.testing.assert_array_equal(batch["loss_mask"][i], row["loss_mask"])
    pre = tmp_path / "pretrain.jsonl"
    pre.write_text(json.dumps({"text": g["pretrain"]["text"]}, ensure_ascii=False) + "\n")
    batch = PretrainDataset(pre, ref_tok, g["max_seq_len_pretrain"], cache_dir=tmp_path).batch([0])
    for key, name in (("input_ids", "X"), ("labels", "Y"), ("loss_mask", "loss_mask")):
        np.testing.assert_array_equal(batch[key][0], g["pretrain"][name])


def test_reference_tokenizer_ids_and_tags(ref_tok):
    assert (ref_tok.vocab_size, ref_tok.encode("<|im_start|><|im_end|><|endoftext|>")) == (6400, [1, 2, 0])
    tags = ref_tok.reasoning_tag_ids()                 # byte-level BPE: each tag is several tokens, shared pieces
    assert len(tags) > 4 and set(tags) == {i for t in ("<think>", "</think>", "<answer>", "</answer>")
                                           for i in ref_tok.encode(t)}
    text = "MiniMind 是一个小模型 <think>\n2+2\n</think>"
    assert ref_tok.decode(ref_tok.encode(text)) == text


def test_pickle_keeps_the_model(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.fingerprint == tok.fingerprint and clone.encode("你好 world") == tok.encode("你好 world")


def test_load_errors(tmp_path):
    with pytest.raises(OSError, match=f"^{tmp_path}: no tokenizer.model or tokenizer.json here$"):
        Tokenizer.load(tmp_path)
    with pytest.raises(OSError, match="no such file"):
        Tokenizer.load(tmp_path / "missing")
    for name in ("tokenizer.model", "tokenizer.json"):
        (tmp_path / name).write_bytes(b"not a model")
        with pytest.raises(ValueError, match=f"^{tmp_path / name}: not a readable tokenizer"):
            Tokenizer.load(tmp_path / name)
    assert Tokenizer.load(DEFAULT_TOKENIZER_DIR / "tokenizer.model").vocab_size == 6400


def test_train_cli(tmp_path, capsys):
    """Training on a small corpus gives the fixed special ids, single-token tags and lossless encoding."""
    corpus = tmp_path / "c.jsonl"
    rows = [{"text": f"第{i}行：the number {i * 37} 和 {i % 7} apples."} for i in range(300)]
    rows += [{"conversations": [{"role": "user", "content": f"{i}+1?"},
                                {"role": "assistant", "content": f"<think>\n{i}+1\n</think>\n<answer>\n{i + 1}\n</answer>"}]}
             for i in range(100)]
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    main(["train", "--input", str(corpus), "--vocab_size", "350", "--out", str(tmp_path / "tok")])
    assert "350 ids" in capsys.readouterr().out
    small = Tokenizer.load(tmp_path / "tok")
    assert [small.encode(t) for t in SPECIAL_TOKENS] == [[0], [1], [2]]
    assert all(len(small.encode(t)) == 1 for t in TAG_TOKENS)
    text = "第3行：the number 111 和 3 apples. 未见过的字 ▁ 😀"
    assert small.decode(small.encode(text)) == text
    with pytest.raises(SystemExit, match="Vocabulary size too high"):      # one line, not a C++ traceback
        main(["train", "--input", str(corpus), "--vocab_size", "5000", "--out", str(tmp_path / "big")])
