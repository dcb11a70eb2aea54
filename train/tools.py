"""The agent stage's tools: plain Python functions `args dict -> JSON-able result`, by name, run sandboxed.

The built-in registry holds the reference agent trainer's six mock tools under its JSON schemas: arithmetic
(parsed here, never `eval`), unit conversion, weather, time, exchange rate and translation, with its mock tables.
`--tools module:registry` (or `file.py:registry`) adds a user dict of name -> function; a user tool's calls count as
valid when their arguments are an object.

Every call is sandboxed: it must finish within the timeout, its result is cut to 2,048 characters of JSON, and any
failure (unknown tool, bad arguments, an exception, the timeout) comes back to the model as a one-line
`{"error": ...}` instead of stopping the run.
"""
import ast
import json
import math
import operator
import signal
import threading
from typing import Callable

RESULT_CHARS = 2048

SCHEMAS = {
    "calculate_math": {"description": "计算数学表达式", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]},
    "unit_converter": {"description": "单位换算",
                       "properties": {"value": {"type": "number"}, "from_unit": {"type": "string"},
                                      "to_unit": {"type": "string"}}, "required": ["value", "from_unit", "to_unit"]},
    "get_current_weather": {"description": "获取天气", "properties": {"location": {"type": "string"}},
                            "required": ["location"]},
    "get_current_time": {"description": "获取时间",
                         "properties": {"timezone": {"type": "string", "default": "Asia/Shanghai"}}, "required": []},
    "get_exchange_rate": {"description": "查询汇率",
                          "properties": {"from_currency": {"type": "string"}, "to_currency": {"type": "string"}},
                          "required": ["from_currency", "to_currency"]},
    "translate_text": {"description": "翻译文本",
                       "properties": {"text": {"type": "string"}, "target_language": {"type": "string"}},
                       "required": ["text", "target_language"]},
}
TOOLS = [{"type": "function", "function": {"name": name, "description": s["description"],
                                           "parameters": {"type": "object", "properties": s["properties"],
                                                          "required": s["required"]}}}
         for name, s in SCHEMAS.items()]

WEATHER = {"北京": ("28°C", "晴"), "上海": ("15°C", "多云"), "广州": ("32°C", "闷热"), "深圳": ("30°C", "晴"),
           "杭州": ("22°C", "阴"), "成都": ("18°C", "小雨"), "武汉": ("25°C", "多云"), "南京": ("20°C", "晴"),
           "西安": ("16°C", "大风"), "重庆": ("26°C", "阴"), "Tokyo": ("12°C", "晴"), "New York": ("8°C", "多云"),
           "London": ("5°C", "小雨"), "Paris": ("10°C", "阴"), "Sydney": ("25°C", "晴朗")}
TIMES = {"Asia/Shanghai": "2025-03-07 14:30:00", "America/New_York": "2025-03-07 01:30:00",
         "Europe/London": "2025-03-07 06:30:00", "Asia/Tokyo": "2025-03-07 15:30:00",
         "Europe/Paris": "2025-03-07 07:30:00", "Australia/Sydney": "2025-03-07 17:30:00"}
RATES = {("USD", "CNY"): 7.21, ("EUR", "CNY"): 7.85, ("GBP", "CNY"): 9.12, ("JPY", "CNY"): 0.048,
         ("USD", "EUR"): 0.92, ("USD", "GBP"): 0.79, ("CNY", "JPY"): 20.83, ("AUD", "CNY"): 4.72}
TRANSLATIONS = {("你好世界", "english"): "Hello World", ("Good morning", "chinese"): "早上好",
                ("今天天气真好", "english"): "The weather is nice today", ("I love programming", "chinese"): "我喜欢编程",
                ("机器学习很有趣", "english"): "Machine learning is interesting", ("Happy birthday", "chinese"): "生日快乐"}
UNITS = {"km_miles": 0.621371, "miles_km": 1.60934, "kg_pounds": 2.20462, "pounds_kg": 0.453592,
         "meters_feet": 3.28084, "feet_meters": 0.3048, "celsius_fahrenheit": 1.8, "fahrenheit_celsius": 0.5556}


# ---- arithmetic without eval ---------------------------------------------------------------------------------------

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_MAGNITUDE = 1e100          # no 9**9**9: a result this large is refused before it is computed
FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round}
CONSTANTS = {"pi": math.pi, "e": math.e}
# The reference's spellings of operators, mapped to Python's before parsing.
SPELLINGS = {"^": "**", "×": "*", "÷": "/", "−": "-", "（": "(", "）": ")"}


def arithmetic(expression: str) -> float | int:
    """The value of an arithmetic expression: numbers, + - * / // % **, parentheses, sqrt/abs/round, pi and e.
    The expression is parsed into a syntax tree and only those nodes are evaluated: no names, attributes, calls
    of anything else, or code."""
    for k, v in SPELLINGS.items():
        expression = expression.replace(k, v)
    return _value(ast.parse(expression.strip(), mode="eval").body)


def _value(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        a, b = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and b != 0 and abs(b) * math.log10(max(abs(a), 2)) > 100:
            raise ValueError("result too large")
        out = BINARY[type(node.op)](a, b)
        if abs(out) > MAX_MAGNITUDE:
            raise ValueError("result too large")
        return out
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            and not node.keywords):
        return FUNCTIONS[node.func.id](*map(_value, node.args))
    raise ValueError(f"unsupported expression: {ast.dump(node)[:60]}")


def _number(x):
    """An integral float as an int (`3` rather than `3.0`), as the sample's tool results spell numbers."""
    return int(x) if isinstance(x, float) and x.is_integer() and abs(x) < 2**53 else x


# ---- the six mock tools --------------------------------------------------------------------------------------------

def calculate_math(args: dict) -> dict:
    return {"result": _number(arithmetic(str(args.get("expression", "0"))))}


def unit_converter(args: dict) -> dict:
    key = f"{str(args.get('from_unit', '')).lower()}_{str(args.get('to_unit', '')).lower()}"
    return {"result": _number(round(float(args.get("value", 0)) * UNITS.get(key, 1), 4))}


def get_current_weather(args: dict) -> dict:
    temperature, condition = WEATHER.get(args.get("location"), ("22°C", "晴"))
    return {"city": args.get("location"), "temperature": temperature, "humidity": "65%", "condition": condition}


def get_current_time(args: dict) -> dict:
    zone = args.get("timezone", "Asia/Shanghai")
    return {"datetime": TIMES.get(zone, "2025-03-07 14:30:00"), "timezone": zone}


def get_exchange_rate(args: dict) -> dict:
    src, dst = args.get("from_currency"), args.get("to_currency")
    return {"from": src, "to": dst, "rate": RATES.get((src, dst), 1.0)}


def translate_text(args: dict) -> dict:
    text = args.get("text", "")
    return {"translated_text": TRANSLATIONS.get((text, args.get("target_language")), text)}


BUILTIN = {f.__name__: f for f in (calculate_math, unit_converter, get_current_weather, get_current_time,
                                   get_exchange_rate, translate_text)}
# What makes a call valid for the reward: the reference's argument checks (a user tool: any object of arguments).
CHECKS: dict[str, Callable[[dict], bool]] = {
    "calculate_math": lambda a: bool(a.get("expression")),
    "unit_converter": lambda a: a.get("value") is not None and bool(a.get("from_unit")) and bool(a.get("to_unit")),
    "get_current_weather": lambda a: bool(a.get("location")),
    "get_current_time": lambda a: True,
    "get_exchange_rate": lambda a: bool(a.get("from_currency")) and bool(a.get("to_currency")),
    "translate_text": lambda a: bool(a.get("text")) and bool(a.get("target_language")),
}


def registry(spec: str | None = None) -> tuple[dict, dict]:
    """(tools, checks): the built-in tools, plus the user's `module:registry` / `file.py:registry` dict."""
    tools, checks = dict(BUILTIN), dict(CHECKS)
    if spec:
        from train.errors import UsageError
        from train.rollout import load_reward_fn
        try:
            user = load_reward_fn(spec)
        except UsageError as e:
            raise UsageError(str(e).replace("--reward_fn", "--tools").replace(":function", ":registry")) from None
        if not isinstance(user, dict) or not all(isinstance(k, str) and callable(v) for k, v in user.items()):
            raise UsageError(f"--tools {spec}: expected a dict of name -> function(args dict)")
        tools.update(user)
        checks.update({name: (lambda a: isinstance(a, dict)) for name in user})
    return tools, checks


# ---- the sandbox ---------------------------------------------------------------------------------------------------

class ToolTimeout(Exception):
    pass


def _with_timeout(fn, args, timeout: float):
    """fn(args), or ToolTimeout after `timeout` seconds. On the main thread a timer signal interrupts the call
    itself; elsewhere the call runs on a daemon thread that is abandoned when it overruns."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def expire(*_):
            raise ToolTimeout()
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn(args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    box = {}

    def target():
        try:
            box["value"] = fn(args)
        except BaseException as e:           # noqa: BLE001  (reported to the caller below)
            box["error"] = e
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ToolTimeout()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _error(message: str) -> str:
    return json.dumps({"error": " ".join(message.split())[:200]}, ensure_ascii=False)


def run_tool(tools: dict, name: str, args, timeout: float = 1.0) -> tuple[str, bool]:
    """(the result as JSON text of at most 2,048 characters, whether the call succeeded)."""
    fn = tools.get(name)
    if fn is None:
        return _error(f"tool not found: {name}"), False
    if not isinstance(args, dict):
        return _error(f"{name}: arguments must be an object"), False
    try:
        result = _with_timeout(fn, args, timeout)
        text = json.dumps(result, ensure_ascii=False)
    except ToolTimeout:
        return _error(f"{name}: timed out after {timeout:g}s"), False
    except Exception as e:                   # noqa: BLE001  (any failure of the tool is the model's feedback)
        return _error(f"{name}: {type(e).__name__}: {e}"), False
    return text[:RESULT_CHARS], True
