"""Build data/sample3/ (the MiniMind-3 row formats) from data/sample/ and generated tool use; no download.

    python data/build_sample3.py

- pretrain.jsonl  rows of data/sample/pretrain.jsonl
- sft.jsonl       chats of data/sample/sft.jsonl; reasoning rows of data/sample/reason.jsonl rewritten as
                  `reasoning_content` (half) or an inline `<think>` block (half); tool-use conversations (tools on
                  the system message, `tool_calls` on the assistant, the results as tool messages, then the answer)
- dpo.jsonl       pairs of data/sample/dpo.jsonl
- rlaif.jsonl     questions of data/sample/rlaif.jsonl with their reference answer as the last (assistant) turn
- agent.jsonl     arithmetic and unit-conversion questions that need the tools, with `gt` the exact results
Rows are drawn with a fixed seed from files in the repository: the same inputs give the same files, byte for byte.
The tokenizer in data/sample3/tokenizer is upstream MiniMind-3's, copied unchanged (Apache-2.0, see its NOTICE).
"""
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tools3  # noqa: E402

SOURCE, OUT = HERE / "sample", HERE / "sample3"
SEED = 20260315
SIZES = {"pretrain": 2400, "chat": 1400, "reason": 400, "tool": 600, "dpo": 400, "rlaif": 600, "agent": 400}
MAX_CHAT_CHARS = 600                # short chats: a tiny model's context is a few hundred tokens
SYSTEM_PROMPTS = ["", "你是一个会使用工具的助手。", "You are a helpful assistant with tools.", "You are minimind."]
THINK = re.compile(r"<think>\n(.*)\n</think>\n<answer>\n(.*)\n</answer>", re.S)


def read(name: str) -> list[dict]:
    with open(SOURCE / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def reasoning_row(row: dict, inline: bool) -> dict:
    """A MiniMind-2 `<think>…</think><answer>…</answer>` reply as MiniMind-3 writes it."""
    question, reply = row["conversations"]
    think, answer = THINK.fullmatch(reply["content"]).groups()
    if inline:
        assistant = {"role": "assistant", "content": f"<think>\n{think}\n</think>\n\n{answer}"}
    else:
        assistant = {"role": "assistant", "reasoning_content": think, "content": answer}
    return {"conversations": [question, assistant]}


def tool_row(rng: random.Random, task: tools3.ToolTask) -> dict:
    """A whole tool-use conversation; a fifth of the calls spell their arguments as a JSON string."""
    calls = [{**c, "arguments": json.dumps(c["arguments"], ensure_ascii=False)} if rng.random() < 0.2 else c
             for c in task.calls]
    return {"conversations": [
        {"role": "system", "content": rng.choice(SYSTEM_PROMPTS), "tools": tools3.tools_json(rng)},
        {"role": "user", "content": task.question},
        {"role": "assistant", "content": "", "tool_calls": json.dumps(calls, ensure_ascii=False)},
        *({"role": "tool", "content": json.dumps(r, ensure_ascii=False)} for r in task.results),
        {"role": "assistant", "content": task.answer}]}


def agent_row(rng: random.Random, task: tools3.ToolTask) -> dict:
    return {"conversations": [{"role": "system", "content": "", "tools": tools3.tools_json(rng)},
                              {"role": "user", "content": task.question},
                              {"role": "assistant", "content": task.answer}],
            "gt": list(task.gt)}


def rlaif_row(row: dict) -> dict:
    turns = row["conversations"]
    return {"conversations": turns if turns[-1]["role"] == "assistant" else
            turns + [{"role": "assistant", "content": ""}]}


def build() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    seen: set = set()                  # tool questions: the agent prompts are not in the SFT file
    tool_tasks = tools3.tasks(rng, SIZES["tool"] + SIZES["agent"], seen)
    reason = rng.sample(read("reason.jsonl"), SIZES["reason"])
    chats = [r for r in read("sft.jsonl") if sum(len(m["content"]) for m in r["conversations"]) <= MAX_CHAT_CHARS]
    sft = (rng.sample(chats, SIZES["chat"])
           + [reasoning_row(r, inline=i % 2 == 1) for i, r in enumerate(reason)]
           + [tool_row(rng, t) for t in tool_tasks[:SIZES["tool"]]])
    rng.shuffle(sft)
    return {"pretrain": rng.sample(read("pretrain.jsonl"), SIZES["pretrain"]),
            "sft": sft,
            "dpo": rng.sample(read("dpo.jsonl"), SIZES["dpo"]),
            "rlaif": [rlaif_row(r) for r in rng.sample(read("rlaif.jsonl"), SIZES["rlaif"])],
            "agent": [agent_row(rng, t) for t in tool_tasks[SIZES["tool"]:]]}


def main():
    OUT.mkdir(exist_ok=True)
    for name, rows in build().items():
        path = OUT / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows):,} rows, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
