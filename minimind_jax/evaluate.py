"""Multiple-choice accuracy (C-Eval / CMMLU style) of a trained MiniMind.

    python -m minimind_jax.evaluate --weight out/full_sft_512                          # the embedded sample set
    python -m minimind_jax.evaluate --weight full_sft --data ceval_val.jsonl --score letter --json results.json

Data: jsonl rows with `question`, `A`, `B`, `C`, `D` and `answer` (a letter); a `subject` (or `category`) field, when
present, adds per-subject accuracy. Each question is asked as one user turn of the run's chat template, and the
prediction is the choice whose continuation of the assistant's turn has the highest log-likelihood:

    --score choice  (default) the question alone; the continuation is the choice's text. Suits small models, which
                    rarely learned to answer with a letter; the sum of log-probabilities favours short choices
                    (--length_norm divides by the choice's token count instead)
    --score letter  the question followed by the lettered choices; the continuation is the letter ("A".."D"),
                    as C-Eval and CMMLU score larger models

Model flags are the chat CLI's (--weight, --load_from, --save_dir, ...).
"""
import argparse
import json
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minimind_jax.chat import PROMPT_BUCKET, add_model_args, open_model
from minimind_jax.tokenizer import Tokenizer

LETTERS = ("A", "B", "C", "D")
SAMPLE = Path(__file__).parent / "evalsets" / "sample_mc.jsonl"


class DataError(ValueError):
    """A bad data file: one line on stderr naming the file and line, exit 2."""


def read_questions(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data {path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
        missing = [k for k in ("question", *LETTERS, "answer") if not isinstance(row.get(k), (str, int, float))]
        if missing:
            raise DataError(f"{path}:{n}: no {missing[0]!r} field (need question, A, B, C, D, answer)")
        if str(row["answer"]).strip().upper() not in LETTERS:
            raise DataError(f"{path}:{n}: answer {row['answer']!r} is not one of A, B, C, D")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no questions")
    return rows


def prompt_and_continuations(row: dict, tokenizer: Tokenizer, score: str) -> tuple[list[int], list[list[int]]]:
    """The templated question's ids and the four continuations' ids."""
    question = str(row["question"])
    if score == "letter":
        question += "".join(f"\n{c}. {row[c]}" for c in LETTERS) + "\nAnswer with the letter of the right choice."
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                            add_generation_prompt=True))
    options = LETTERS if score == "letter" else [str(row[c]) for c in LETTERS]
    return prompt, [tokenizer.encode(o) for o in options]


@partial(jax.jit, static_argnames=("model",))
def _token_logprobs(model, params, ids, mask):
    """log p(ids[:, t+1] | ids[:, :t+1]) for every t: [B, T-1] float32."""
    logits = model.apply({"params": params}, ids, mask).logits[:, :-1].astype(jnp.float32)
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), ids[:, 1:, None], axis=-1)[..., 0]


def continuation_logprobs(model, params, pairs: list[tuple[list[int], list[int]]], batch: int = 16) -> np.ndarray:
    """Sum of log p(continuation | prompt) for each (prompt, continuation) pair.

    Rows are right-padded to a multiple of 64 tokens (a causal model's earlier positions never see the padding),
    and every batch has `batch` rows, so one program is compiled per length bucket.
    """
    out = np.zeros(len(pairs), np.float64)
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        T = -(-max(len(p) + len(c) for p, c in chunk) // PROMPT_BUCKET) * PROMPT_BUCKET
        ids, mask, scored = (np.zeros((batch, T), np.int32) for _ in range(3))
        for r, (p, c) in enumerate(chunk):
            ids[r, :len(p) + len(c)], mask[r, :len(p) + len(c)] = p + c, 1
            scored[r, len(p) - 1:len(p) + len(c) - 1] = 1            # the positions that predict the continuation
        logp = np.asarray(_token_logprobs(model, params, jnp.asarray(ids), jnp.asarray(mask)), np.float64)
        out[start:start + len(chunk)] = (logp * scored[:, :-1])[:len(chunk)].sum(axis=1)
    return out


def evaluate(model, params, tokenizer: Tokenizer, rows: list[dict], score: str = "choice",
             length_norm: bool = False, batch: int = 16) -> dict:
    """-> {"accuracy", "correct", "total", "subjects": {name: {...}}, "predictions": [...]}."""
    pairs, lengths = [], []
    for row in rows:
        prompt, continuations = prompt_and_continuations(row, tokenizer, score)
        pairs += [(prompt, c) for c in continuations]
        lengths += [len(c) for c in continuations]
    scores = continuation_logprobs(model, params, pairs, batch).reshape(len(rows), len(LETTERS))
    if length_norm:
        scores = scores / np.maximum(np.asarray(lengths).reshape(scores.shape), 1)
    by_subject = defaultdict(lambda: [0, 0])
    predictions = []
    for row, s in zip(rows, scores):
        predicted, answer = LETTERS[int(np.argmax(s))], str(row["answer"]).strip().upper()
        subject = str(row.get("subject", row.get("category", "all")))
        by_subject[subject][0] += predicted == answer
        by_subject[subject][1] += 1
        predictions.append({"id": row.get("id"), "subject": subject, "answer": answer, "predicted": predicted,
                            "logprobs": [round(float(x), 4) for x in s]})
    correct = sum(c for c, _ in by_subject.values())
    return {"score": score, "length_norm": length_norm, "accuracy": correct / len(rows), "correct": correct,
            "total": len(rows),
            "subjects": {k: {"accuracy": c / n, "correct": c, "total": n} for k, (c, n) in sorted(by_subject.items())},
            "predictions": predictions}


def table(result: dict) -> str:
    rows = [(name, s["correct"], s["total"], s["accuracy"]) for name, s in result["subjects"].items()]
    rows.append(("overall", result["correct"], result["total"], result["accuracy"]))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'subject':<{width}}  correct  total  accuracy"]
    lines += [f"{name:<{width}}  {c:>7}  {n:>5}  {a:>8.1%}" for name, c, n, a in rows]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimind_jax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", default=str(SAMPLE), help="jsonl of questions (default: the embedded sample)")
    p.add_argument("--score", default="choice", choices=["choice", "letter"], help="what is scored (see above)")
    p.add_argument("--length_norm", action="store_true", help="mean instead of sum of the continuation's log-probs")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--json", default=None, help="also write the result (with every prediction) to this file")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        rows = read_questions(args.data)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    opened = open_model(args)
    if opened is None:
        return 2
    tokenizer, model, params = opened
    result = evaluate(model, params, tokenizer, rows, args.score, args.length_norm, args.batch_size)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
