"""One RNG root per run, `--seed`, and a named stream for every use of randomness.

Each stream is the root folded with the stream's number, and every draw inside a stream is folded with what it is
for (a step, a batch of the offline init), so a draw depends only on (seed, stream, index): a resumed run draws what
an unbroken one drew, and adding a new stream never moves the numbers of another. Data order is the one thing not
drawn here: it is a NumPy permutation of (seed, epoch), so the host can compute it without touching a device.
"""
import jax

# Never renumber: the numbers are what make a seed's run reproducible across versions.
STREAMS = {
    "params": 0,          # a fresh model's weights
    "adapters": 1,        # LoRA's A matrices
    "heads": 2,           # the critic's and the reward model's scalar heads
    "train": 3,           # dropout inside the train step (split once per step from TrainState.rng)
    "rollout": 4,         # sampling completions, folded with the step
    "spo_resample": 5,    # SPO-paper's prioritised draw of prompts, folded with the step
    "spo_init": 6,        # SPO-paper's offline samples, folded with the sampler call
}


def stream(seed: int, name: str) -> jax.Array:
    """The root key of one named stream (a raw uint32 [2] key: plain arrays checkpoint everywhere)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), STREAMS[name])


def draw(seed: int, name: str, index: int) -> jax.Array:
    """The key of draw `index` (a step, a batch) of a stream."""
    return jax.random.fold_in(stream(seed, name), index)
