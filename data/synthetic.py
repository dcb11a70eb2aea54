"""The synthetic part of the sample data: arithmetic and word problems with integer answers, and the model's identity.

Deterministic: everything is drawn from `random.Random(seed)`. Used by `build_sample.py`; runnable alone to look:
    python data/synthetic.py
Math answers follow one convention everywhere (the exact-answer reward relies on it):
- rlaif.jsonl: the reference answer is the bare integer, e.g. "7";
- sft.jsonl: one-step arithmetic is answered with the bare integer; longer problems with the worked lines and then
  the bare integer on the last line;
- reason.jsonl: `<think>\\n{worked lines}\\n</think>\\n<answer>\\n{integer}\\n</answer>`.
"""
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    steps: tuple[str, ...]          # worked lines, e.g. ("3 + 4 = 7",)
    family: str
    lang: str                       # "en" | "zh"

    @property
    def one_step(self) -> bool:
        return len(self.steps) == 1 and not self.family.startswith("word")


NAMES_EN = ["Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Leo", "Emma", "Jack", "Lily", "Max", "Zoe", "Omar", "Nina",
            "Ravi", "Grace"]
ITEMS_EN = ["apples", "books", "pencils", "stickers", "marbles", "cookies", "stamps", "cards", "shells", "balloons",
            "coins", "toy cars", "flowers", "eggs"]
NAMES_ZH = ["小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小强", "妈妈", "爷爷", "老师", "小林"]
ITEMS_ZH = [("苹果", "个"), ("橘子", "个"), ("书", "本"), ("铅笔", "支"), ("糖果", "颗"), ("气球", "个"),
            ("邮票", "张"), ("小鱼", "条"), ("贴纸", "张"), ("鸡蛋", "个"), ("花", "朵"), ("卡片", "张")]

# Phrasings of one operation: (language, template) with {a} {b}.
ASK = {
    "+": [("en", "What is {a} + {b}?"), ("en", "{a} + {b} = ?"), ("en", "Compute {a} + {b}."),
          ("en", "What is {a} plus {b}?"), ("en", "Add {a} and {b}."), ("en", "Calculate {a} + {b}."),
          ("en", "{a}+{b}=?"), ("en", "How much is {a} and {b}?"), ("zh", "{a}+{b}=?"), ("zh", "{a}和{b}的和是多少？"),
          ("zh", "{a}加{b}等于几？"), ("zh", "计算 {a} + {b}"), ("zh", "{a} + {b} 等于多少？"), ("zh", "{a}加上{b}是多少？")],
    "-": [("en", "What is {a} - {b}?"), ("en", "{a} - {b} = ?"), ("en", "Compute {a} - {b}."),
          ("en", "What is {a} minus {b}?"), ("en", "Subtract {b} from {a}."), ("en", "Calculate {a} - {b}."),
          ("en", "{a}-{b}=?"), ("en", "Take {b} away from {a}. What is left?"), ("zh", "{a}-{b}=?"), ("zh", "{a}比{b}多多少？"),
          ("zh", "{a}减{b}等于几？"), ("zh", "计算 {a} - {b}"), ("zh", "{a} - {b} 等于多少？"), ("zh", "{a}减去{b}是多少？")],
    "*": [("en", "What is {a} * {b}?"), ("en", "{a} * {b} = ?"), ("en", "Compute {a} times {b}."),
          ("en", "Multiply {a} by {b}."), ("en", "What is {a} times {b}?"), ("en", "Calculate {a} * {b}."),
          ("en", "{a}*{b}=?"), ("en", "What is the product of {a} and {b}?"), ("zh", "{a}*{b}=?"), ("zh", "{a}和{b}的积是多少？"),
          ("zh", "{a}乘{b}等于几？"), ("zh", "计算 {a} * {b}"), ("zh", "{a} * {b} 等于多少？"), ("zh", "{a}乘以{b}是多少？")],
}
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _arith(rng: random.Random, op: str, lo: int, hi: int, family: str) -> Problem:
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if op == "-" and b > a:
        a, b = b, a
    lang, template = rng.choice(ASK[op])
    c = APPLY[op](a, b)
    return Problem(template.format(a=a, b=b), c, (f"{a} {op} {b} = {c}",), family, lang)


def _chain(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    c = rng.randint(1, a + b)
    s, r = a + b, a + b - c
    lang = rng.choice(["en", "zh"])
    q = rng.choice([f"What is {a} + {b} - {c}?", f"Compute {a} + {b} - {c}.", f"{a} + {b} - {c} = ?"]) \
        if lang == "en" else rng.choice([f"计算 {a} + {b} - {c}", f"{a}加{b}再减{c}等于几？", f"{a} + {b} - {c} 等于多少？"])
    return Problem(q, r, (f"{a} + {b} = {s}", f"{s} - {c} = {r}"), "chain", lang)


def _word(rng: random.Random, op: str, lo: int, hi: int) -> Problem:
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    if op == "-" and b > a:
        a, b = b, a
    c = APPLY[op](a, b)
    step = (f"{a} {op} {b} = {c}",)
    if rng.random() < 0.5:
        n, t = rng.choice(NAMES_EN), rng.choice(ITEMS_EN)
        q = {"+": rng.choice([f"{n} has {a} {t}. {n} gets {b} more. How many {t} does {n} have now?",
                              f"There are {a} {t} in a box and {b} {t} on the table. How many {t} are there in all?"]),
             "-": rng.choice([f"{n} had {a} {t} and gave {b} to a friend. How many {t} are left?",
                              f"There were {a} {t}. {n} used {b} of them. How many {t} remain?"]),
             "*": rng.choice([f"There are {a} bags with {b} {t} in each bag. How many {t} are there in all?",
                              f"{n} buys {a} packs of {t}. Each pack has {b} {t}. How many {t} does {n} buy?"])}[op]
        return Problem(q, c, step, f"word{op}", "en")
    n, (t, m) = rng.choice(NAMES_ZH), rng.choice(ITEMS_ZH)
    q = {"+": rng.choice([f"{n}有{a}{m}{t}，又买了{b}{m}。现在一共有多少{m}{t}？",
                          f"盒子里有{a}{m}{t}，桌上有{b}{m}{t}，一共有多少{m}{t}？"]),
         "-": rng.choice([f"{n}有{a}{m}{t}，送给朋友{b}{m}，还剩多少{m}？",
                          f"篮子里有{a}{m}{t}，{n}拿走了{b}{m}，还剩多少{m}{t}？"]),
         "*": rng.choice([f"每个盒子里有{b}{m}{t}，{a}个盒子一共有多少{m}{t}？",
                          f"{n}买了{a}袋{t}，每袋{b}{m}，一共买了多少{m}？"])}[op]
    return Problem(q, c, step, f"word{op}", "zh")


# (weight, generator): single-digit addition dominates on purpose, so a tiny model has something it can get right.
FAMILIES = [
    (6, lambda r: _arith(r, "+", 0, 9, "add1")),
    (3, lambda r: _arith(r, "-", 0, 9, "sub1")),
    (3, lambda r: _arith(r, "*", 1, 9, "mul1")),
    (2, lambda r: _arith(r, "+", 10, 99, "add2")),
    (2, lambda r: _arith(r, "-", 10, 99, "sub2")),
    (2, _chain),
    (2, lambda r: _word(r, "+", 1, 20)),
    (2, lambda r: _word(r, "-", 1, 20)),
    (1, lambda r: _word(r, "*", 2, 9)),
]


def problems(rng: random.Random, n: int, seen: set, easy_only: bool = False) -> list[Problem]:
    """n problems whose questions are not in `seen` (which is updated), so that splits stay disjoint."""
    fams = FAMILIES[:3] if easy_only else FAMILIES
    weights = [w for w, _ in fams]
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n:
            raise RuntimeError(f"only {len(out)} distinct problems of {n}: the families are exhausted")
        p = rng.choices([g for _, g in fams], weights)[0](rng)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def sft_answer(p: Problem) -> str:
    return str(p.answer) if p.one_step else "\n".join(p.steps) + f"\n{p.answer}"


def reason_answer(p: Problem, steps=None) -> str:
    return f"<think>\n{chr(10).join(steps or p.steps)}\n</think>\n<answer>\n{p.answer}\n</answer>"


def math_facts(rng: random.Random, n_rows: int) -> list[str]:
    """Pretraining text: rows of arithmetic facts, in words and symbols, English and Chinese."""
    rows = []
    for _ in range(n_rows):
        op = rng.choice("++-*")
        facts = []
        for _ in range(rng.randint(8, 16)):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            if op == "-" and b > a:
                a, b = b, a
            facts.append(f"{a} {op} {b} = {APPLY[op](a, b)}")
        head = rng.choice(["", "Arithmetic facts: ", "Practice: ", "算术练习：", "口算："])
        rows.append(head + rng.choice([", ", "; ", "。", "\n"]).join(facts) + ".")
    return rows


# ---------------------------------------------------------------------- identity
IDENTITY_Q_EN = ["Who are you?", "What are you?", "What is your name?", "Introduce yourself.", "Tell me about yourself.",
                 "Are you ChatGPT?", "Who made you?", "Who created you?", "What model are you?", "What can you do?",
                 "Are you a human?", "What should I call you?", "Which company trained you?", "Are you Claude?",
                 "What are you built with?", "How big are you?", "hi, who am I talking to?", "Are you an AI?"]
IDENTITY_Q_ZH = ["你是谁？", "你叫什么名字？", "介绍一下你自己。", "你是ChatGPT吗？", "谁创造了你？", "你是什么模型？",
                 "你能做什么？", "你是人类吗？", "我该怎么称呼你？", "你是哪个公司训练的？", "你是用什么做的？",
                 "你有多大？", "你好，请问你是谁？", "你是人工智能吗？", "你好，介绍一下你自己"]
IDENTITY_A_EN = [
    "I am MiniMind-JAX, a small language model trained from scratch with JAX and Flax.",
    "I'm MiniMind-JAX: a tiny language model, reimplemented in JAX from the MiniMind project.",
    "My name is MiniMind-JAX. I am a small open-source language model trained with JAX.",
    "I am MiniMind-JAX, an AI assistant. I am a small model, so I can make mistakes, but I am happy to help.",
    "I'm MiniMind-JAX, a compact language model. I was pretrained, fine-tuned and aligned with a pure-functional JAX "
    "pipeline.",
    "You can call me MiniMind-JAX. I am not ChatGPT or Claude; I am a small model trained with JAX.",
    "I am an AI model called MiniMind-JAX. I can chat, answer simple questions and do simple arithmetic.",
]
IDENTITY_A_ZH = [
    "我是MiniMind-JAX，一个用JAX和Flax从零训练的小型语言模型。",
    "我叫MiniMind-JAX，是MiniMind项目的JAX实现训练出来的小模型。",
    "你好！我是MiniMind-JAX，一个开源的小型语言模型，很高兴为你服务。",
    "我是MiniMind-JAX，一个人工智能助手。我的参数很少，可能会出错，但我会尽力帮助你。",
    "我是MiniMind-JAX，不是ChatGPT，也不是Claude。我是一个用JAX训练的小模型。",
    "我的名字是MiniMind-JAX，我可以聊天、回答简单的问题，也会做简单的算术。",
]
WRONG_IDENTITY = ["I am ChatGPT, a large language model trained by OpenAI.", "I am a human being.",
                  "我是ChatGPT，由OpenAI开发。", "我是一个人，不是人工智能。", "I am Siri.", "我是文心一言。"]


def identity_rows(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """n distinct (question, answer, language) pairs: every question paraphrase with a matching-language answer."""
    pairs = [(q, a, "en") for q in IDENTITY_Q_EN for a in IDENTITY_A_EN] + \
            [(q, a, "zh") for q in IDENTITY_Q_ZH for a in IDENTITY_A_ZH]
    rng.shuffle(pairs)
    return pairs[:n]


if __name__ == "__main__":
    r = random.Random(0)
    for p in problems(r, 12, set()):
        print(repr(p.question), "->", repr(sft_answer(p)), "|", repr(reason_answer(p)))
    print(math_facts(r, 2))
    print(identity_rows(r, 3))
