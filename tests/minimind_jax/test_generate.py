"""Generation: the KV cache reproduces the full forward, greedy decoding follows the forward's argmax, left padding
is invisible, eos handling, and the sampling filters."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimind_jax import MiniMindConfig, MiniMindForCausalLM
from minimind_jax.generate import completion_mask, decoding_model, generate, sample_token
from minimind_jax.model import KVCache, decode_layout

V, P, N = 96, 6, 8


def random_params(model, seed=0, embed_std=1.0, kernel_std=0.1):
    """By default weights large enough that the logits have clear maxima (argmax paths do not hinge on rounding)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    rng = np.random.default_rng(seed)
    scale = lambda path: embed_std if path[-1].key == "embed_tokens" else kernel_std
    draw = lambda path, s: ((path[-1].key == "weight") + rng.normal(0, scale(path), s.shape)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def setup():
    cfg = MiniMindConfig.from_preset("tiny", vocab_size=V)
    model = MiniMindForCausalLM(cfg)
    params = random_params(model)
    rng = np.random.default_rng(1)
    ids = rng.integers(3, V, (3, P)).astype(np.int32)
    mask = np.ones((3, P), np.int32)
    ids[1, :2], mask[1, :2] = 0, 0                      # row 1 is left-padded by 2
    ids[2, :4], mask[2, :4] = 0, 0                      # row 2 by 4
    return cfg, model, params, jnp.asarray(ids), jnp.asarray(mask)


@partial(jax.jit, static_argnames="model")
def full_logits(model, params, ids, mask):
    return model.apply({"params": params}, ids, mask).logits


def greedy(model, params, ids, mask, eos=None, n=N):
    return generate(model, params, ids, mask, max_new_tokens=n, temperature=0.0, eos_token_id=eos)


def test_cache_decoding_equals_full_forward(setup):
    """Prefill P tokens, then feed one token at a time: every step's logits equal the full forward's (1e-5)."""
    cfg, model, _, ids, mask = setup
    params = random_params(model, embed_std=0.02, kernel_std=0.02)                 # logits of order 1
    extra = np.random.default_rng(2).integers(3, V, (3, 4)).astype(np.int32)
    seq = jnp.concatenate([ids, jnp.asarray(extra)], axis=1)                        # [3, P + 4]
    seq_mask = jnp.concatenate([mask, jnp.ones_like(jnp.asarray(extra))], axis=1)
    want = full_logits(model, params, seq, seq_mask)

    @partial(jax.jit, static_argnames="parts")
    def decode(params, ids, mask, extra, parts):
        out = model.apply({"params": params}, ids, mask, cache=KVCache.create(cfg, 3, P + 4))
        logits, cache = [out.logits], out.cache
        variables = {"params": params}
        if parts > 1:                                   # the per-core weight blocks generate() decodes with
            variables["decode"] = decode_layout(params, parts)
        for t in range(extra.shape[1]):
            out = model.apply(variables, extra[:, t:t + 1], cache=cache)
            logits.append(out.logits)
            cache = out.cache
        return jnp.concatenate(logits, axis=1), cache

    real = np.asarray(seq_mask)[..., None] == 1
    for parts in (1, 3):
        got, cache = decode(params, ids, mask, jnp.asarray(extra), parts)
        np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=1e-5, rtol=0)
        assert int(cache.index) == P + 4 and np.array_equal(cache.mask, seq_mask)


def test_greedy_follows_the_argmax_of_the_full_forward(setup):
    """What the RL trainer relies on: a full forward over the returned sequences (mask = [prompt, completion])
    predicts, at every completion position, the token that was generated there."""
    cfg, model, params, ids, mask = setup
    out = greedy(model, params, ids, mask)
    assert out.sequences.shape == (3, P + N) and out.sequences.dtype == jnp.int32
    assert out.completion_mask.shape == (3, N) and bool(jnp.all(out.completion_mask == 1))   # no eos: all kept
    np.testing.assert_array_equal(out.sequences[:, :P], ids)
    full_mask = jnp.concatenate([mask, out.completion_mask], axis=1)
    logits = full_logits(model, params, out.sequences, full_mask)
    np.testing.assert_array_equal(jnp.argmax(logits[:, P - 1:-1], axis=-1), out.sequences[:, P:])


def test_left_padding_does_not_change_a_rows_continuation(setup):
    cfg, model, params, ids, mask = setup
    batch = greedy(model, params, ids, mask).sequences
    for b, pad in ((1, 2), (2, 4)):
        alone = greedy(model, params, ids[b:b + 1, pad:], None).sequences         # the same prompt, unpadded
        np.testing.assert_array_equal(batch[b, P:], alone[0, P - pad:])


def test_eos_stops_rows_and_pads_after_it(setup):
    cfg, model, params, ids, mask = setup
    free = np.asarray(greedy(model, params, ids, mask).sequences[:, P:])
    eos = int(free[0, 2])                                       # row 0 emits this token at step 2
    out = greedy(model, params, ids, mask, eos=eos)
    tokens, cmask = np.asarray(out.sequences[:, P:]), np.asarray(out.completion_mask)
    for b in range(3):
        hits = np.flatnonzero(free[b] == eos)
        stop = hits[0] if len(hits) else N - 1
        np.testing.assert_array_equal(tokens[b, :stop + 1], free[b, :stop + 1])      # same until the first eos
        assert np.all(tokens[b, stop + 1:] == 0)                                    # then pad
        np.testing.assert_array_equal(cmask[b], np.arange(N) <= stop)               # 1 through the eos


def test_sampling_filters_and_rng(setup):
    cfg, model, params, ids, mask = setup
    sample = lambda key, **kw: generate(model, params, ids, mask, rng=key, max_new_tokens=N, temperature=0.8,
                                        eos_token_id=None, **kw).sequences
    want = greedy(model, params, ids, mask).sequences
    np.testing.assert_array_equal(sample(jax.random.key(0), top_k=1), want)       # top-1 is greedy
    np.testing.assert_array_equal(sample(jax.random.key(0), top_p=1e-6), want)    # so is a vanishing nucleus
    hot = lambda key: generate(model, params, ids, mask, rng=key, max_new_tokens=N, temperature=20.0,
                               eos_token_id=None).sequences
    a, b, c = hot(jax.random.key(3)), hot(jax.random.key(3)), hot(jax.random.key(4))
    np.testing.assert_array_equal(a, b)                                           # a pure function of the key
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="needs rng"):
        generate(model, params, ids, mask, temperature=0.8)


def test_a_rows_draws_depend_on_its_key_alone(setup):
    """With one key per row, a row samples the same completion alone or batched with other rows (the property that
    makes a rollout the same on 1 device, 4 devices or 2 processes)."""
    cfg, model, params, ids, mask = setup
    keys = jax.random.split(jax.random.key(7), 3)
    hot = lambda rows, keys: generate(model, params, ids[rows], mask[rows], rng=keys, max_new_tokens=N,
                                      temperature=20.0, eos_token_id=None).sequences
    together = hot(np.arange(3), keys)
    for row in range(3):
        np.testing.assert_array_equal(hot(np.array([row]), keys[row:row + 1])[0], together[row])
    raw = jax.random.key_data(keys)                                                # uint32 [3, 2] keys work alike
    np.testing.assert_array_equal(hot(np.arange(3), raw), together)
    assert not np.array_equal(hot(np.arange(3), keys[::-1]), together)


def test_runs_of_one_prompt_prefilled_once_sample_as_if_each_were_prefilled(setup):
    """prompt_groups=g (each prompt's cache computed once and copied to its g rows) gives exactly the
    completions of prefilling every row, padded rows included; rows that are not runs are refused."""
    cfg, model, params, ids, mask = setup
    g = 4
    keys = jax.random.split(jax.random.key(3), 3 * g)
    rows = np.repeat(np.arange(3), g)
    hot = lambda groups: generate(model, params, ids[rows], mask[rows], rng=keys, max_new_tokens=N,
                                  temperature=1e3, eos_token_id=None, prompt_groups=groups)
    each, shared = hot(1), hot(g)
    np.testing.assert_array_equal(shared.sequences, each.sequences)
    assert len({tuple(r) for r in np.asarray(each.sequences)[:g, P:]}) > 1     # the g rollouts do differ
    with pytest.raises(ValueError, match="prompt_groups"):
        generate(model, params, ids, mask, temperature=0.0, prompt_groups=2)


def test_runs_of_equal_rows():
    from train.multiturn import runs_of_equal_rows
    a, b = [1, 2, 3], [1, 2, 4]
    assert runs_of_equal_rows(np.array([a, a, a, b, b, b])) == 3
    assert runs_of_equal_rows(np.array([a, a, b, b, b, b])) == 2
    assert runs_of_equal_rows(np.array([a, b, a, b])) == 1
    assert runs_of_equal_rows(np.array([a, a, a, a])) == 4


def test_generate_under_an_outer_jit(setup):
    cfg, model, params, ids, mask = setup
    outer = jax.jit(lambda p, ids, m: greedy(model, p, ids, m).sequences)
    np.testing.assert_array_equal(outer(params, ids, mask), greedy(model, params, ids, mask).sequences)


def test_bf16_weights_decode_in_bf16(setup):
    cfg, model, params, ids, mask = setup
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    assert decoding_model(model, bf16).policy.compute_dtype == jnp.bfloat16
    assert decoding_model(model, params) is model
    out = greedy(model, bf16, ids, mask)
    want = greedy(model, params, ids, mask).sequences
    assert out.sequences.dtype == jnp.int32
    assert np.mean(np.asarray(out.sequences[:, P:]) == np.asarray(want[:, P:])) > 0.5   # mostly the same path


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.5), (5, 0.6)])
def test_sample_token_stays_in_the_allowed_set(top_k, top_p):
    logits = jnp.asarray(np.random.default_rng(0).normal(0, 2, (4, 50)), jnp.float32)
    draws = jax.jit(jax.vmap(lambda k: sample_token(logits, k, 1.0, top_k, top_p)))(
        jax.random.split(jax.random.key(0), 400))                                  # [400, 4]
    order = np.argsort(-np.asarray(logits), axis=-1)
    for b in range(4):
        allowed = order[b, :top_k] if top_k else order[b]
        if top_p < 1:
            probs = np.asarray(jax.nn.softmax(logits[b, allowed]))
            allowed = allowed[: int(np.searchsorted(np.cumsum(probs), top_p)) + 1]   # smallest set reaching top_p
        drawn = set(np.asarray(draws[:, b]).tolist())
        assert drawn <= set(allowed.tolist()) and order[b, 0] in drawn


@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=9), min_size=1, max_size=4).filter(
    lambda rows: len({len(r) for r in rows}) == 1))
def test_completion_mask_is_one_through_the_first_eos(rows):
    tokens = np.asarray(rows)
    got = np.asarray(completion_mask(jnp.asarray(tokens), 2))
    for row, m in zip(tokens, got):
        hits = np.flatnonzero(row == 2)
        end = hits[0] if len(hits) else len(row) - 1
        np.testing.assert_array_equal(m, np.arange(len(row)) <= end)
    assert np.all(np.asarray(completion_mask(jnp.asarray(tokens), None)) == 1)
