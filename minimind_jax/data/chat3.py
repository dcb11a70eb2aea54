"""MiniMind-3 chat rows: what a conversation must look like, and the text variants its data sets draw between.

A message is `{"role", "content", "reasoning_content", "tools", "tool_calls"}`; every field but the role may be
missing or null. Roles are system, user, assistant and tool. `tools` (on a system message) and `tool_calls` (on
an assistant message) are JSON strings in the jsonl files, or already-decoded lists; they are decoded here.

The reference's random rules act on whole texts; each is a variant of a text that is tokenized once:
- an injected system prompt is a prefix: `system_block(p)` followed by the row's own text, which always starts with
  the special token `<|im_start|>`, so the two tokenize independently and their ids just concatenate;
- dropping the empty think block changes the text in the middle, so that variant is tokenized as a text of its own.
"""
import json

from minimind_jax.data.jsonl import BadRow, field
from minimind_jax.template3 import EMPTY_THINK, TURN_END

ROLES = ("system", "user", "assistant", "tool")
OPTIONAL_TEXT = ("content", "reasoning_content")

# The reference's pool of system prompts, one picked uniformly when a prompt is injected.
SYSTEM_PROMPTS = (
    "你是一个知识丰富的AI，尽力为用户提供准确的信息。",
    "你是minimind，一个小巧但有用的语言模型。",
    "你是一个专业的AI助手，请提供有价值的回答。",
    "你是minimind，请尽力帮助用户解决问题。",
    "你是一个可靠的AI，请给出准确的回答。",
    "You are a helpful AI assistant.",
    "You are minimind, a lightweight intelligent assistant.",
    "You are a friendly chatbot. Please answer the user's questions carefully.",
    "You are a knowledgeable AI. Try your best to provide accurate information.",
    "You are minimind, a small but useful language model.",
)

# Row flags kept in the cache: which variants a row has.
CAN_ADD_SYSTEM = 1          # no tools anywhere and the first message is not a system one
HAS_EMPTY_THINK = 2         # the text holds an empty think block (for DPO: the chosen side)
REJECTED_EMPTY_THINK = 4    # DPO: the rejected side holds one


def system_block(prompt: str) -> str:
    return f"<|im_start|>system\n{prompt}{TURN_END}"


def conversation(row: dict, key: str) -> tuple[list[dict], list | None]:
    """(messages, tools) of row[key], checked, with tools and tool_calls decoded; tools are the system message's."""
    turns = field(row, key, list, "a list of messages")
    if not turns:
        raise BadRow(f'"{key}" is an empty list')
    messages, tools = [], None
    for i, m in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise BadRow(f'{where} must be an object with "role" and "content"')
        if m.get("role") not in ROLES:
            raise BadRow(f'{where}: role {m.get("role")!r} is not one of {", ".join(ROLES)}')
        for name in OPTIONAL_TEXT:
            if m.get(name) is not None and not isinstance(m[name], str):
                raise BadRow(f'{where}: "{name}" must be a string, not {type(m[name]).__name__}')
        m = dict(m)
        if m.get("role") == "system" and m.get("tools"):
            tools = _decoded(m["tools"], f'{where}: "tools"')
        if m.get("tool_calls"):
            m["tool_calls"] = _tool_calls(_decoded(m["tool_calls"], f'{where}: "tool_calls"'), where)
        messages.append(m)
    return messages, tools


def may_add_system(turns: list[dict]) -> bool:
    """Whether the reference may inject a system prompt: never into tool-use data or before a system message."""
    return not any(m.get("tools") for m in turns) and turns[0].get("role") != "system"


def empty_think_variant(text: str) -> tuple[str, int]:
    """(the text without any empty think block, HAS_EMPTY_THINK) if it holds one, else ("", 0)."""
    return (text.replace(EMPTY_THINK, ""), HAS_EMPTY_THINK) if EMPTY_THINK in text else ("", 0)


def _decoded(value, where: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise BadRow(f"{where} is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BadRow(f"{where} must be a list of objects")
    return value


def _tool_calls(calls: list[dict], where: str) -> list[dict]:
    for j, call in enumerate(calls):
        if "name" not in (call.get("function") or call):
            raise BadRow(f'{where}: tool_calls[{j}] has no "name"')
    return calls
