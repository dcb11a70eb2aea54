"""The chat CLI: weights from a run directory, the chat template, streaming equal to `generate`, the loop."""
import io

import jax
import numpy as np
import pytest

from tests.minimind_jax.helpers import peaked_tiny_lm

from minimind_jax.convert import save_weights
from minimind_jax.generate import generate
from minimind_jax.lora import init_lora, lora_to_torch

from minimind_jax import chat


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trainer-style run directory (weights.safetensors + config.json) holding a tiny random model whose
    logits have clear maxima."""
    cfg, model, params = peaked_tiny_lm(0.1)
    d = tmp_path_factory.mktemp("full_sft_64")
    save_weights(d / "weights.safetensors", params, cfg, dtype=np.float32)
    (d / "config.json").write_text(cfg.to_json())
    return d, cfg, model, params


def test_one_shot_prompt(run_dir, capsys):
    d, *_ = run_dir
    assert chat.main(["--weight", str(d), "--prompt", "What is 3 + 4?", "--max_new_tokens", "6",
                      "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("assistant: ") and out.endswith("\n") and out.count("\n") == 1


def test_stream_equals_generate(run_dir):
    """The streamed reply is the templated prompt's greedy continuation, token for token."""
    d, cfg, model, params = run_dir
    tokenizer = chat.Tokenizer.load()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    prompt = tokenizer.encode(text)
    streamed = list(chat.stream(model, params, prompt, rng=jax.random.key(0), max_new_tokens=8, temperature=0.0,
                                eos_token_id=-1))
    P = -(-len(prompt) // chat.PROMPT_BUCKET) * chat.PROMPT_BUCKET                 # chat left-pads to a bucket
    ids, mask = np.zeros((1, P), np.int32), np.zeros((1, P), np.int32)
    ids[0, P - len(prompt):], mask[0, P - len(prompt):] = prompt, 1
    want = generate(model, params, ids, mask, max_new_tokens=8, temperature=0.0, eos_token_id=None).sequences[0, P:]
    assert streamed == [int(t) for t in want]

    writes = []
    out = io.StringIO()
    out.write = lambda s: writes.append(s) or len(s)
    args = chat.parser().parse_args(["--max_new_tokens", "8", "--temperature", "0"])
    answer = chat.reply(model, params, tokenizer, [{"role": "user", "content": "hello"}], args, jax.random.key(0), out)
    assert len(writes) > 2 and "".join(writes) == answer + "\n"                # streamed in pieces


def test_interactive_loop_with_lora(run_dir, monkeypatch, capsys, tmp_path):
    d, cfg, model, params = run_dir
    from safetensors.numpy import save_file
    lora = jax.tree.map(lambda x: x + 0.05, init_lora(jax.random.key(0), params, cfg))
    save_file(lora_to_torch(lora, cfg), str(tmp_path / "lora.safetensors"))
    questions = iter(["hi", "and again?"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(questions, ""))   # an empty line quits
    assert chat.main(["--weight", str(d), "--lora_weight", str(tmp_path / "lora.safetensors"),
                      "--max_new_tokens", "4", "--history_cnt", "2"]) == 0
    assert capsys.readouterr().out.count("assistant: ") == 2


def test_missing_weights_is_one_line(tmp_path, capsys):
    assert chat.main(["--weight", "full_sft", "--out_dir", str(tmp_path), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "full_sft_512/weights.safetensors does not exist" in err


# ---- the reference's eval flags ---------------------------------------------------------------------------------

def answers(argv, monkeypatch, questions=("hi",)) -> list[list[dict]]:
    """Run the interactive loop on `questions`; -> the messages each reply was asked to continue."""
    seen = []
    real_reply = chat.reply

    def spy(model, params, tokenizer, messages, args, rng, out=None):
        seen.append(messages)
        return real_reply(model, params, tokenizer, messages, args, rng, out)

    lines = iter(questions)
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines, ""))
    monkeypatch.setattr(chat, "reply", spy)
    assert chat.main(argv + ["--max_new_tokens", "4", "--temperature", "0"]) == 0
    return seen


def test_save_dir_is_the_out_dir(run_dir, tmp_path, capsys):
    import shutil
    d, *_ = run_dir
    shutil.copytree(d, tmp_path / "full_sft_64")                     # the trainer's <save_dir>/<weight>_<hidden>
    assert chat.main(["--save_dir", str(tmp_path), "--weight", "full_sft", "--hidden_size", "64",
                      "--prompt", "hi", "--max_new_tokens", "4", "--temperature", "0"]) == 0
    want = capsys.readouterr().out
    assert chat.main(["--weight", str(d), "--prompt", "hi", "--max_new_tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == want


def test_historys_keeps_that_many_messages(run_dir, monkeypatch, capsys):
    d, *_ = run_dir
    three = ("one", "two", "three")
    kept = answers(["--weight", str(d), "--historys", "2"], monkeypatch, three)
    assert [[m["content"] for m in msgs if m["role"] == "user"] for msgs in kept] == \
        [["one"], ["one", "two"], ["two", "three"]]
    assert [m["role"] for m in kept[2]] == ["user", "assistant", "user"]
    none = answers(["--weight", str(d), "--historys", "0"], monkeypatch, three)
    assert [len(msgs) for msgs in none] == [1, 1, 1]


def test_load_from_a_run_dir_or_a_hugging_face_export(run_dir, tmp_path, capsys):
    from minimind_jax.export import export
    d, *_ = run_dir
    flags = ["--prompt", "hi", "--max_new_tokens", "6", "--temperature", "0"]
    assert chat.main(["--weight", str(d)] + flags) == 0
    want = capsys.readouterr().out
    assert chat.main(["--load_from", str(d), "--weight", "ignored"] + flags) == 0
    assert capsys.readouterr().out == want
    export(d, tmp_path / "hf", "hf", outtype="f32")
    assert chat.main(["--load_from", str(tmp_path / "hf")] + flags) == 0
    assert capsys.readouterr().out == want
    assert chat.main(["--load_from", str(tmp_path / "missing")] + flags) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inference_rope_scaling_turns_yarn_on(run_dir):
    d, cfg, *_ = run_dir
    args = chat.parser().parse_args(["--weight", str(d), "--inference_rope_scaling"])
    model, _ = chat.load_model(args)
    assert model.cfg.inference_rope_scaling and not cfg.inference_rope_scaling
    model, _ = chat.load_model(chat.parser().parse_args(["--weight", str(d)]))
    assert not model.cfg.inference_rope_scaling


def test_lora_weight_none_means_no_adapters(run_dir, capsys):
    d, cfg, model, params = run_dir
    _, loaded = chat.load_model(chat.parser().parse_args(["--weight", str(d), "--lora_weight", "None"]))
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
