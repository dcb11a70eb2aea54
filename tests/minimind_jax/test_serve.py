"""The OpenAI-compatible server, driven by the official `openai` client over 127.0.0.1: answers equal to the chat
CLI's decoding, streaming, the model list, concurrent requests run as one batch, and errors."""
import json
import shutil
import threading
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.minimind_jax.helpers import peaked_tiny_lm

from minimind_jax import chat, serve
from minimind_jax.tokenizer import Tokenizer

openai = pytest.importorskip("openai", reason="the server tests use the official client: pip install openai")


@pytest.fixture(scope="module")
def lm():
    """A tiny random model whose logits have clear maxima (N(0, 1) embeddings), so greedy answers are stable, and
    whose answers depend on the question (N(0, 0.3) elsewhere)."""
    _, model, params = peaked_tiny_lm(0.3)
    return model, params


@pytest.fixture(scope="module")
def server(lm):
    """The server on a free port of 127.0.0.1, batching whatever arrives within 300 ms; shut down afterwards."""
    model, params = lm
    settings = serve.Settings("tiny-random", Tokenizer.load(), max_new_tokens=16, max_seq_len=256)
    srv = serve.Server(("127.0.0.1", 0), model, params, settings, max_batch=4, batch_wait_s=0.3)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive() and not srv.batcher.thread.is_alive()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120, max_retries=0)


def greedy_text(lm, question: str, max_tokens: int) -> str:
    """What the chat CLI's decoding (one row, batch of one) answers, greedily."""
    model, params = lm
    tok = Tokenizer.load()
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True))
    ids = list(chat.stream(model, params, prompt, rng=jax.random.key(0), max_new_tokens=max_tokens,
                           temperature=0.0, eos_token_id=tok.eos_id))
    return tok.decode(ids, skip_special_tokens=True)


def ask(client, question: str, **kw):
    return client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": question}],
                                          temperature=0, max_tokens=kw.pop("max_tokens", 12), **kw)


def test_models_list(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-random"] and models[0].owned_by == "minimind-jax"


def test_non_streaming_equals_chat_decoding(client, lm):
    r = ask(client, "What is 3 + 4?")
    assert r.object == "chat.completion" and r.model == "tiny-random" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert choice.message.content == greedy_text(lm, "What is 3 + 4?", 12)
    assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_chunks_add_up(client):
    chunks = list(ask(client, "tell me a story", stream=True, max_tokens=10))
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 3 and text == ask(client, "tell me a story", max_tokens=10).choices[0].message.content


def test_concurrent_requests_run_as_one_batch(client, server, lm):
    """Two requests sent together decode in one batch, and each gets exactly its solo greedy answer (left padding
    and the other row change nothing)."""
    questions = ["hello there", "what is the capital of France? Answer in one word please."]
    answers, errors = {}, []

    def run(q):
        try:
            answers[q] = ask(client, q).choices[0].message.content
        except Exception as e:       # surfaced below: an exception in a thread would otherwise vanish
            errors.append(e)

    before = len(server.batcher.batch_sizes)
    threads = [threading.Thread(target=run, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(answers) == 2
    assert server.batcher.batch_sizes[before:] == [2]
    assert answers[questions[0]] != answers[questions[1]]
    for q in questions:
        assert answers[q] == greedy_text(lm, q, 12)


def test_sampling_with_a_seed_is_reproducible(client):
    kw = dict(model="tiny-random", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=1.0,
              top_p=0.9, seed=7)
    first = client.chat.completions.create(**kw).choices[0].message.content
    assert client.chat.completions.create(**kw).choices[0].message.content == first


def test_bad_requests_are_400_with_the_parameter(client, server):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], temperature=5)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="x", messages=[])
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="x", messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server.url}/v2/nothing", timeout=10)
    assert e.value.code == 404 and "no route" in json.loads(e.value.read())["error"]["message"]


def test_the_page_is_served(server):
    with urllib.request.urlopen(f"{server.url}/", timeout=10) as r:
        page = r.read().decode()
    assert r.headers["Content-Type"].startswith("text/html") and "/v1/chat/completions" in page


def test_sample_rows_is_sample_token_per_row():
    """Greedy rows are argmax; a top_p that keeps one token draws it; rows do not disturb each other."""
    logits = jax.random.normal(jax.random.key(0), (3, 50)) * 3
    keys = jnp.stack([jax.random.key(i) for i in range(3)])
    out = serve.sample_rows(logits, keys, jnp.asarray([0.0, 1.0, 0.7]), jnp.asarray([1.0, 1e-6, 0.9]))
    assert int(out[0]) == int(jnp.argmax(logits[0])) and int(out[1]) == int(jnp.argmax(logits[1]))
    again = serve.sample_rows(logits[2:], keys[2:], jnp.asarray([0.7]), jnp.asarray([0.9]))
    assert int(again[0]) == int(out[2])


def test_cli_refuses_missing_weights(tmp_path, capsys):
    assert serve.main(["--weight", "full_sft", "--out_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


# ---- the page in a real browser ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_page_in_headless_chromium(server, tmp_path):
    """Type a message into the page in headless Chromium and see the streamed reply; the screenshot is kept in
    tmp_path for a person to look at."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("needs Debian's chromium and chromium-driver packages")
    webdriver = pytest.importorskip("selenium.webdriver", reason="drives the browser with selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        driver.get(f"{server.url}/")
        box = driver.find_element(By.ID, "input")
        box.send_keys("Hello, who are you?")
        box.send_keys("\n")
        reply = WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant[data-done='1']"))
        text = reply.text
        assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == "Hello, who are you?"
        assert text and text != "…"
        assert driver.find_element(By.ID, "title").text == "tiny-random"
        shot = tmp_path / "chat.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 5000
        print(f"screenshot: {shot}")
    finally:
        driver.quit()


@pytest.mark.parametrize("spread", [8.0, 0.1])
def test_nucleus_shortcut_equals_the_full_sort(spread):
    """Peaked rows (the mass in the top candidates) and flat rows (the full sort) keep the same tokens as sorting
    the whole vocabulary."""
    scaled = jax.random.normal(jax.random.key(1), (4, 6400)) * spread
    top_p = jnp.asarray([0.5, 0.85, 0.95, 0.999])
    ranked = -jnp.sort(-scaled, axis=-1)
    probs = jax.nn.softmax(ranked, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p[:, None]
    want = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)
    np.testing.assert_array_equal(scaled >= serve.nucleus_threshold(scaled, top_p), scaled >= want)
