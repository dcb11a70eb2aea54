"""Held-out evaluation during training (`--eval_data PATH`): the stage's own loss on every row of a held-out file,
without dropout and without touching the training state, as `eval_loss` and `eval_ppl` = exp(mean CE).

Means are over target tokens (each batch weighted by its loss-mask sum), so the figure does not depend on the
batch size; the last, partial batch compiles once more.
"""
import math

import jax
import numpy as np

from minimind_jax.data import open_dataset


class Evaluator:
    def __init__(self, run, stage, frozen):
        d, o = run.config.data, run.config.optim
        self.dataset = open_dataset(stage.dataset, d.eval_path, run.tokenizer, d.max_seq_len, seed=run.config.seed,
                                    skip_bad_lines=d.skip_bad_lines, cache_dir=d.cache_dir)
        self.batch_size, self.frozen = o.batch_size, frozen
        loss_fn = stage.make_loss(run)
        key = jax.random.PRNGKey(0)            # the model runs without dropout here; the key is only a placeholder
        self.step = jax.jit(lambda params, batch, extra: loss_fn(params, batch, key, self.frozen, extra)[1])

    def __call__(self, state) -> dict[str, float]:
        totals, weight = {}, 0.0
        for start in range(0, len(self.dataset), self.batch_size):
            rows = np.arange(start, min(start + self.batch_size, len(self.dataset)))
            batch = {k: v for k, v in self.dataset.batch(rows).items() if isinstance(v, np.ndarray)}
            metrics = jax.device_get(self.step(state.params, batch, state.extra))
            w = float(np.sum(batch["loss_mask"])) if "loss_mask" in batch else float(len(rows))
            for k in ("loss", "ce"):
                if k in metrics:
                    totals[k] = totals.get(k, 0.0) + w * float(metrics[k])
            weight += w
        out = {f"eval_{k}": v / max(weight, 1e-9) for k, v in totals.items()}
        if "eval_ce" in out:
            out["eval_ppl"] = math.exp(min(out["eval_ce"], 700.0))
        return out
