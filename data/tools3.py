"""The tool-use part of the MiniMind-3 sample: two tools, questions that need them, and their exact answers.

The tools are the reference agent trainer's `calculate_math` (an arithmetic expression) and `unit_converter`
(value × a fixed factor, rounded to 4 places), with the same JSON schemas, so a rollout can execute the calls
the sample teaches. Deterministic: everything is drawn from the `random.Random` passed in.
"""
import json
import random
from dataclasses import dataclass

CALCULATE = {"type": "function", "function": {
    "name": "calculate_math", "description": "计算数学表达式",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
CONVERT = {"type": "function", "function": {
    "name": "unit_converter", "description": "单位换算",
    "parameters": {"type": "object", "properties": {"value": {"type": "number"}, "from_unit": {"type": "string"},
                                                    "to_unit": {"type": "string"}},
                   "required": ["value", "from_unit", "to_unit"]}}}
# The reference's conversion factors (its temperature ones are plain factors too, so they are left out).
FACTORS = {("km", "miles"): 0.621371, ("miles", "km"): 1.60934, ("kg", "pounds"): 2.20462,
           ("pounds", "kg"): 0.453592, ("meters", "feet"): 3.28084, ("feet", "meters"): 0.3048}
UNIT_ZH = {"km": "公里", "miles": "英里", "kg": "千克", "pounds": "磅", "meters": "米", "feet": "英尺"}


@dataclass(frozen=True)
class ToolTask:
    question: str
    calls: tuple[dict, ...]         # [{"name", "arguments"}], in order
    results: tuple[dict, ...]       # what each call returns
    answer: str                     # the final reply, which states every result
    gt: tuple[str, ...]             # the facts the final reply must contain
    lang: str


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _expression(rng: random.Random) -> str:
    a, b, c = rng.randint(12, 999), rng.randint(12, 999), rng.randint(2, 49)
    return rng.choice([f"{a} * {c}", f"{a} + {b}", f"{a} - {b}", f"({a} + {b}) * {c}", f"{a} * {c} - {b}",
                       f"{a} + {b} + {c}"])


def math_task(rng: random.Random, n_exprs: int = 1) -> ToolTask:
    exprs = [_expression(rng) for _ in range(n_exprs)]
    values = [eval(e, {"__builtins__": {}}) for e in exprs]        # our own expressions: digits and + - * ( )
    lang = rng.choice(["en", "zh"])
    if lang == "en":
        question = (rng.choice(["What is {}?", "Calculate {}.", "Please compute {} for me.", "How much is {}?"])
                    .format(" and ".join(exprs)) if n_exprs == 1 else f"Compute {exprs[0]} and also {exprs[1]}.")
        answer = " ".join(f"{e} = {_number(v)}." for e, v in zip(exprs, values))
    else:
        question = (rng.choice(["{}等于多少？", "帮我算一下 {}", "计算 {}", "{} 的结果是多少？"]).format(exprs[0])
                    if n_exprs == 1 else f"请分别计算 {exprs[0]} 和 {exprs[1]}。")
        answer = "，".join(f"{e} = {_number(v)}" for e, v in zip(exprs, values)) + "。"
    calls = tuple({"name": "calculate_math", "arguments": {"expression": e}} for e in exprs)
    return ToolTask(question, calls, tuple({"result": v} for v in values), answer,
                    tuple(_number(v) for v in values), lang)


def convert_task(rng: random.Random) -> ToolTask:
    (src, dst), factor = rng.choice(list(FACTORS.items()))
    value = rng.choice([rng.randint(2, 500), round(rng.uniform(1, 100), 1)])
    result = round(float(value) * factor, 4)
    lang = rng.choice(["en", "zh"])
    if lang == "en":
        question = rng.choice(["How many {d} is {v} {s}?", "Convert {v} {s} to {d}.", "What is {v} {s} in {d}?"])
        answer = f"{_number(value)} {src} is {_number(result)} {dst}."
    else:
        question = rng.choice(["{v}{S}等于多少{D}？", "把{v}{S}换算成{D}", "{v}{S}是多少{D}？"])
        answer = f"{_number(value)}{UNIT_ZH[src]}等于{_number(result)}{UNIT_ZH[dst]}。"
    question = question.format(v=_number(value), s=src, d=dst, S=UNIT_ZH[src], D=UNIT_ZH[dst])
    call = {"name": "unit_converter", "arguments": {"value": value, "from_unit": src, "to_unit": dst}}
    return ToolTask(question, (call,), ({"result": result},), answer, (_number(result),), lang)


def tasks(rng: random.Random, n: int, seen: set) -> list[ToolTask]:
    """n tasks with questions not in `seen` (updated): half arithmetic (a tenth of those with two calls), half
    unit conversion."""
    out = []
    while len(out) < n:
        t = convert_task(rng) if len(out) % 2 else math_task(rng, 2 if rng.random() < 0.1 else 1)
        if t.question not in seen:
            seen.add(t.question)
            out.append(t)
    return out


def tools_json(rng: random.Random) -> str:
    """The system message's tools, as the jsonl files hold them: a JSON string, in a drawn order. Only these two:
    each tool costs about 130 tokens of the prompt, and a tiny model's context is a few hundred."""
    tools = [CALCULATE, CONVERT]
    rng.shuffle(tools)
    return json.dumps(tools, ensure_ascii=False)
