"""The agent study's data (MiniMind-3 tool use), generated from a seed; no download.

    python data/build_agent3.py OUT_DIR [--seed 0] [--direct 0.5]

Three jsonl files, every question drawn once (no question is in two files, nor in data/sample3/):

- agent.jsonl       tool-needing prompts in the agent stage's format (data/sample3/agent.jsonl): the tools on an
                    empty system message, the question, the reference reply; `gt` the exact results. The study
                    holds out every 2nd row (train.batches.held_out_split), a mix of both tools.
- agent_sft.jsonl   whole agent conversations in the same format: question, `tool_calls`, the tool results, the
                    answer stating them. The SFT warm-up that teaches a model the call format. A fraction
                    (--direct) answer at once instead, without a call, as a chat model does that was never told
                    when a tool pays: the model then guesses on some prompts, and RL has a choice to learn.
- agent_copy.jsonl  the same conversations without the tools block (~110 tokens instead of ~440): a cheap first
                    warm-up phase in which a tiny model learns to copy numbers from the question into the call and
                    from the tool result into the answer.

The tasks are data/tools3.py's two tools with its schemas and question templates, at sizes a 64x2 model can copy:
three one-digit operands, conversions of whole values below 100. The answer is what the tool returns, so it is checked
exactly against `gt`.
"""
import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tools3  # noqa: E402

SIZES = {"agent": 1200, "agent_sft": 800, "agent_copy": 4000}
# Half the arithmetic questions open with the expression: its first number is then the same token as in the call's
# JSON string ("7 + 3 + 4" -> '7'), where after a word it is another token (' 7'), a mapping a tiny model learns
# late. Both kinds stay, so there is something left for RL to learn.
EN_MATH = ["{} = ?", "{} equals what?", "What is {}?", "Please compute {} for me."]
ZH_MATH = ["{}等于多少？", "{} 的结果是多少？", "帮我算一下 {}", "计算 {}"]
EN_CONVERT = ["How many {d} is {v} {s}?", "Convert {v} {s} to {d}.", "What is {v} {s} in {d}?"]
ZH_CONVERT = ["{v}{S}等于多少{D}？", "把{v}{S}换算成{D}", "{v}{S}是多少{D}？"]


def expression(rng: random.Random) -> tuple[str, int]:
    """An expression of three one-digit operands and its value: every expression is spelt with the same number of
    tokens, so a number sits at the same distance in the question and in the call (512 of each form)."""
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
    text = rng.choice([f"{a} + {b} + {c}", f"({a} + {b}) * {c}", f"{a} * {b} - {c}", f"{a} * {b} + {c}",
                       f"{a} + {b} - {c}", f"{a} - {b} + {c}"])
    return text, eval(text, {"__builtins__": {}})          # our own text: digits and + - * ( )


def result_sentence(value, lang: str) -> str:
    """The final answer: the tool's result first, so that it is copied from a fixed distance back (a tiny
    model's attention finds a fixed offset long before it learns to search)."""
    return f"The result is {value}." if lang == "en" else f"结果是 {value}。"


def math_task(rng: random.Random) -> tools3.ToolTask:
    text, value = expression(rng)
    lang = rng.choice(["en", "zh"])
    question = rng.choice(EN_MATH if lang == "en" else ZH_MATH).format(text)
    answer = result_sentence(value, lang)
    call = {"name": "calculate_math", "arguments": {"expression": text}}
    return tools3.ToolTask(question, (call,), ({"result": value},), answer, (str(value),), lang)


def convert_task(rng: random.Random) -> tools3.ToolTask:
    (src, dst), factor = rng.choice(list(tools3.FACTORS.items()))
    value = rng.randint(2, 99)
    result = round(value * factor, 4)              # what the unit_converter tool returns
    lang = rng.choice(["en", "zh"])
    names = dict(v=value, s=src, d=dst, S=tools3.UNIT_ZH[src], D=tools3.UNIT_ZH[dst])
    question = rng.choice(EN_CONVERT if lang == "en" else ZH_CONVERT).format(**names)
    spelt = tools3._number(result)
    answer = result_sentence(spelt, lang)
    call = {"name": "unit_converter", "arguments": {"value": value, "from_unit": src, "to_unit": dst}}
    return tools3.ToolTask(question, (call,), ({"result": result},), answer, (spelt,), lang)


def call_key(t: tools3.ToolTask) -> str:
    return json.dumps(t.calls, sort_keys=True)


def tasks(rng: random.Random, n: int, seen: set, taken: set, unique: bool = True) -> list[tools3.ToolTask]:
    """n tasks, about one in seven a conversion (whose 4-decimal results a 64x2 model rarely copies whole), whose
    calls are not in `taken`; `unique`: nor their questions in `seen`, each call once (both sets updated)."""
    out = []
    while len(out) < n:
        t = convert_task(rng) if rng.random() < 0.15 else math_task(rng)
        if call_key(t) not in taken and (not unique or t.question not in seen):
            if unique:
                seen.add(t.question)
                taken.add(call_key(t))
            out.append(t)
    return out


def conversation(rng: random.Random, t: tools3.ToolTask, tools: bool, direct: bool = False) -> list[dict]:
    """The task as a chat: the call, its results and the answer; `direct`: the answer alone, with no call."""
    system = [{"role": "system", "content": "", "tools": tools3.tools_json(rng)}] if tools else []
    if direct:
        return [*system, {"role": "user", "content": t.question}, {"role": "assistant", "content": t.answer}]
    return [*system, {"role": "user", "content": t.question},
            {"role": "assistant", "content": "", "tool_calls": json.dumps(list(t.calls), ensure_ascii=False)},
            *({"role": "tool", "content": json.dumps(r, ensure_ascii=False)} for r in t.results),
            {"role": "assistant", "content": t.answer}]


def answers_at_once(rng: random.Random, direct: float) -> bool:
    """Whether an SFT row answers without a call; draws nothing at 0, so those files keep their bytes."""
    return direct > 0 and rng.random() < direct


def sample3_questions() -> set[str]:
    """The user questions of the shipped MiniMind-3 sample, kept out of the study's files."""
    seen = set()
    for name in ("agent.jsonl", "sft.jsonl"):
        for line in (HERE / "sample3" / name).read_text(encoding="utf-8").splitlines():
            seen |= {m["content"] for m in json.loads(line)["conversations"] if m["role"] == "user"}
    return seen


def build(seed: int = 0, sizes: dict[str, int] = SIZES, direct: float = 0.0) -> dict[str, list[dict]]:
    """{file: rows}; `direct`: the fraction of agent_sft rows answered without a call. No agent prompt's calls
    are those of an SFT row: the warm-up never shows a held-out answer (the SFT rows may repeat calls and questions
    among themselves)."""
    rng, seen = random.Random(seed), sample3_questions()
    agent_calls: set = set()
    agent = tasks(rng, sizes["agent"], seen, agent_calls)
    sft, copy = (tasks(rng, sizes[k], seen, agent_calls, unique=False) for k in ("agent_sft", "agent_copy"))
    return {"agent": [{"conversations": [{"role": "system", "content": "", "tools": tools3.tools_json(rng)},
                                         {"role": "user", "content": t.question},
                                         {"role": "assistant", "content": t.answer}], "gt": list(t.gt)}
                      for t in agent],
            "agent_sft": [{"conversations": conversation(rng, t, tools=True, direct=answers_at_once(rng, direct))}
                          for t in sft],
            "agent_copy": [{"conversations": conversation(rng, t, tools=False)} for t in copy]}


def write(out: Path, seed: int = 0, sizes: dict[str, int] = SIZES, direct: float = 0.0) -> dict[str, Path]:
    """The files of `build(seed, sizes, direct)` in `out` ({name: path}); the same arguments give the same
    bytes."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in build(seed, sizes, direct).items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--direct", type=float, default=0.0, help="fraction of agent_sft rows answered without a call")
    a = p.parse_args()
    if not 0 <= a.direct <= 1:
        p.error(f"--direct {a.direct}: a fraction of the rows, between 0 and 1")
    for name, path in write(a.out, a.seed, direct=a.direct).items():
        print(f"{path}: {SIZES[name]:,} rows, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
