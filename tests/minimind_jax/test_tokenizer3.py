"""The MiniMind-3 tokenizer and chat template: the upstream goldens (text and ids), and the Jinja original."""
import json
import pickle
import shutil

import pytest
from hypothesis import given, strategies as st

from minimind_jax.data.chat3 import conversation
from minimind_jax.template3 import render
from minimind_jax.tokenizer import SAMPLE3_TOKENIZER_DIR, Tokenizer, template_generation


@pytest.fixture(scope="module")
def tok(tok3):
    return tok3


@pytest.fixture
def gold(gold3):
    return gold3


def sft_form(messages):
    """(messages, tools) as the SFT data set hands them to the template: tools and tool_calls decoded."""
    return conversation({"conversations": messages}, "conversations")


def test_shipped_tokenizer_is_upstreams(shared_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "NOTICE"):
        assert (SAMPLE3_TOKENIZER_DIR / name).read_bytes() == shared_path(f"minimind3/tokenizer/{name}").read_bytes()


def test_special_and_tag_tokens_are_single_ids(tok, gold):
    assert tok.vocab_size == 6400 and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    for token, i in gold["special_tokens"].items():
        assert tok.encode(token) == [i]
    tags = [t for t in gold["special_tokens"] if not t.startswith("<|")]
    text = "".join(tags)
    assert tok.decode(tok.encode("<|im_start|>" + text + "<|im_end|>"), skip_special_tokens=True) == text
    assert tok.reasoning_tag_ids() == sorted(gold["special_tokens"][t] for t in ("<think>", "</think>"))


def test_template_is_detected_from_the_config_content(tok, tmp_path, shared_path):
    assert tok.generation == 3 and Tokenizer.load().generation == 2
    assert pickle.loads(pickle.dumps(tok)).generation == 3
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SAMPLE3_TOKENIZER_DIR / name, tmp_path / name)
    assert Tokenizer.load(tmp_path).generation == 3                            # any directory: it is the content
    (tmp_path / "tokenizer_config.json").write_bytes(shared_path("minimind_tokenizer/tokenizer_config.json").read_bytes())
    assert Tokenizer.load(tmp_path).generation == 2                            # MiniMind-2's template
    (tmp_path / "tokenizer_config.json").unlink()
    assert Tokenizer.load(tmp_path).generation == 2 and template_generation(tmp_path / "missing.json") == 2


def test_minimind2_template_has_no_tools():
    with pytest.raises(ValueError, match="no tools"):
        Tokenizer.load().apply_chat_template([{"role": "user", "content": "x"}], tools=[{"name": "f"}])


def test_chat_goldens_text_and_ids(tok, gold):
    for case in gold["chat"]:
        messages, tools = sft_form(case["messages"])
        text = tok.apply_chat_template(messages, tools=tools)
        assert text == case["template_text"], case["name"]
        assert tok.encode(text) == case["template_ids"], case["name"]
        assert tok.decode(case["template_ids"]) == text


def test_generation_prompt_goldens(tok, gold):
    for case in gold["generation_prompt"]:
        text = tok.apply_chat_template(case["messages"], add_generation_prompt=True, tools=case.get("tools"),
                                       open_thinking=case["open_thinking"] is True)
        assert text == case["text"] and tok.encode(text) == case["ids"]


def test_agent_rollout_contexts(tok, gold):
    """The rollout's first prompt, and its final context: the re-rendered template plus the last answer."""
    g = gold["agent_rollout"]
    prompt = tok.apply_chat_template(g["messages_in"], add_generation_prompt=True, tools=g["tools"])
    assert tok.encode(prompt) == g["prompt_ids"]
    after = tok.apply_chat_template(g["messages_after"], add_generation_prompt=True, tools=g["tools"])
    assert after + g["final_output"] == g["final_context"]


# ---------------------------------------------------------------------- against the Jinja original
@pytest.fixture(scope="module")
def jinja_template():
    """The template string of tokenizer_config.json in the environment Hugging Face renders it with."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    config = json.loads((SAMPLE3_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    return env.from_string(config["chat_template"])


TEXT = st.sampled_from(["", "hi", "\n", "\nlead", "trail\n\n", "中文，😀", "a <think> b", "<think>\nr\n</think>\n\nc",
                        "x</think>y</think>\nz", "<think>a<think>b</think>c", "  sp", "{\"k\": 1}"])
ARGS = st.one_of(st.sampled_from(['{"x": 1}', "raw text"]),
                 st.dictionaries(st.sampled_from(["a", "城市", "n"]), st.one_of(st.integers(), TEXT), max_size=2))
CALL = st.builds(lambda name, args, wrap: {"function": {"name": name, "arguments": args}} if wrap
                 else {"name": name, "arguments": args}, st.sampled_from(["f", "get_weather"]), ARGS, st.booleans())
MESSAGE = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, TEXT),
    st.builds(lambda c: {"role": "system", "content": c}, TEXT),
    st.builds(lambda c: {"role": "tool", "content": c}, st.one_of(TEXT, st.none())),
    st.builds(lambda c, r, calls: {"role": "assistant", "content": c, "reasoning_content": r, "tool_calls": calls},
              st.one_of(TEXT, st.none()), st.one_of(st.none(), TEXT), st.one_of(st.none(), st.lists(CALL, max_size=3))))
TOOLS = st.one_of(st.none(), st.just([]), st.lists(st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "天气"]),
                                                                      "parameters": st.just({"type": "object"})})}),
    min_size=1, max_size=2))


@given(messages=st.lists(MESSAGE, min_size=1, max_size=7), tools=TOOLS, gen=st.booleans(), think=st.booleans())
def test_template_equals_the_jinja_original(jinja_template, messages, tools, gen, think):
    expected = jinja_template.render(messages=messages, tools=tools, add_generation_prompt=gen, open_thinking=think)
    assert render(messages, tools, gen, think) == expected
