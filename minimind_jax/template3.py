"""MiniMind-3's chat template, in plain Python: the same text as the Jinja template in its tokenizer_config.json.

    <|im_start|>system\\n{system}<|im_end|>\\n                  first message, if it is a system one (no tools)
    <|im_start|>system\\n{system}\\n\\n# Tools ...<|im_end|>\\n     with tools: one block, the tools one JSON per line
    <|im_start|>user\\n{content}<|im_end|>\\n                   user turns (and later system turns)
    <|im_start|>assistant\\n<think>\\n{reasoning}\\n</think>\\n\\n{content}<tool_call>...</tool_call><|im_end|>\\n
    <|im_start|>user\\n<tool_response>\\n{result}\\n</tool_response>...<|im_end|>\\n    a run of tool messages
    <|im_start|>assistant\\n<think>\\n[\\n</think>\\n\\n]          the generation prompt, thinking open [closed]

Every assistant turn carries a think block, empty when it has no reasoning; there is no default system prompt.
Messages are dicts with `role`, `content` and optionally `reasoning_content` and `tool_calls` (a list of
`{"name", "arguments"}`, possibly wrapped as `{"function": {...}}`; arguments a JSON string or an object).
"""
import json

EMPTY_THINK = "<think>\n\n</think>\n\n"
OPEN_THINK = "<think>\n"
ASSISTANT_START = "<|im_start|>assistant\n"
TURN_END = "<|im_end|>\n"
TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
              "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
              "<args-json-object>}\n</tool_call><|im_end|>\n")


def tojson(value) -> str:
    """JSON as the Hugging Face template filter writes it: non-ASCII kept, key order kept, `", "` and `": "`."""
    return json.dumps(value, ensure_ascii=False)


def render(messages: list[dict], tools: list | None = None, add_generation_prompt: bool = False,
           open_thinking: bool = False) -> str:
    """The template's text for `messages` (see the module doc)."""
    out = [_system_block(messages, tools)]
    for k, m in enumerate(messages):
        role = m.get("role")
        if role == "user" or (role == "system" and k > 0):
            out.append(f"<|im_start|>{role}\n{_text(m.get('content'))}{TURN_END}")
        elif role == "assistant":
            out.append(_assistant_turn(m))
        elif role == "tool":            # consecutive tool results share one user turn
            first = k == 0 or messages[k - 1].get("role") != "tool"
            last = k == len(messages) - 1 or messages[k + 1].get("role") != "tool"
            out.append(("<|im_start|>user" if first else "")
                       + f"\n<tool_response>\n{_text(m.get('content'))}\n</tool_response>"
                       + (TURN_END if last else ""))
    if add_generation_prompt:
        out.append(ASSISTANT_START + (OPEN_THINK if open_thinking is True else EMPTY_THINK))
    return "".join(out)


def _text(content) -> str:
    return content if isinstance(content, str) else ""


def _system_block(messages: list[dict], tools) -> str:
    system = messages[0].get("role") == "system" if messages else False
    if not tools:
        return f"<|im_start|>system\n{_text(messages[0].get('content'))}{TURN_END}" if system else ""
    lead = _text(messages[0].get("content")) + "\n\n" if system else ""
    return "<|im_start|>system\n" + lead + TOOLS_HEAD + "".join("\n" + tojson(t) for t in tools) + TOOLS_TAIL


def split_think(content: str) -> tuple[str, str]:
    """(reasoning, answer) of an assistant content that spells its reasoning inline as `<think>...</think>`."""
    if "</think>" not in content:
        return "", content
    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, content.split("</think>")[-1].lstrip("\n")


def _assistant_turn(m: dict) -> str:
    content = _text(m.get("content"))
    reasoning = m.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning, content = split_think(content)
    text = [f"{ASSISTANT_START}<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"]
    for i, call in enumerate(m.get("tool_calls") or []):
        if i > 0 or content:            # the unstripped content decides, as in the Jinja original
            text.append("\n")
        call = call.get("function") or call
        args = call.get("arguments")
        name = str(call["name"]) if "name" in call else ""
        text.append(f'<tool_call>\n{{"name": "{name}", "arguments": '
                    f'{args if isinstance(args, str) else tojson(args)}}}\n</tool_call>')
    text.append(TURN_END)
    return "".join(text)
