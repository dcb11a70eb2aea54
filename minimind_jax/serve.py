"""An OpenAI-compatible chat server for a trained MiniMind, with a chat page.

    python -m minimind_jax.serve --weight out/full_sft_512                # then open http://127.0.0.1:8000/
    curl 127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "hi"}], "stream": true}'

    POST /v1/chat/completions   OpenAI's request and response; `stream: true` sends server-sent chunks. Honoured:
                                messages, temperature (0: greedy), top_p, max_tokens (or max_completion_tokens;
                                at most --max_new_tokens), seed. Defaults: the chat CLI's 0.85, 0.85 and
                                --max_new_tokens
    GET  /v1/models             the one model
    GET  /                      the chat page

The model flags are the chat CLI's (--weight, --load_from, --save_dir, ...). The prompt is the run's tokenizer's
chat template, cut to the last --max_seq_len tokens.

Batching: one worker thread owns the model. It takes the first waiting request, waits --batch_wait_ms for others,
and decodes up to --max_batch of them together with the KV cache, streaming each row's tokens as they come;
requests that arrive meanwhile form the next batch. Prompts are left-padded to a multiple of 64 tokens, completions
budgeted in multiples of 64, and the batch padded to a power of two, so only a bounded set of programs is compiled.
"""
import argparse
import dataclasses
import json
import queue
import secrets
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from minimind_jax.chat import PROMPT_BUCKET, add_model_args, decode_step, open_model, prefill
from minimind_jax.generate import decoding_model, step_keys as row_step_keys
from minimind_jax.tokenizer import Tokenizer

PAGE = Path(__file__).parent / "static" / "chat.html"
ROLES = ("system", "user", "assistant", "tool")


# ---- sampling, one setting per row ------------------------------------------------------------------------------

CANDIDATES = 256      # top-p is decided among the largest logits when they hold the mass (see nucleus_threshold)


def nucleus_threshold(scaled, top_p):
    """Per row, the smallest logit that top-p sampling keeps: the tokens whose mass before them (in descending
    order) is below top_p. Sorting the whole vocabulary costs ~2 ms a row on CPU, so the CANDIDATES largest are
    tried first; only when some row needs more of the tail is the full sort run. Same result either way."""
    def threshold(ranked):
        probs = jnp.exp(ranked - jax.nn.logsumexp(scaled, axis=-1, keepdims=True))      # over the whole vocabulary
        mass = jnp.cumsum(probs, axis=-1)
        keep = (mass - probs) < top_p[:, None]
        return jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True), mass[:, -1]

    k = min(CANDIDATES, scaled.shape[-1])
    cut, covered = threshold(lax.top_k(scaled, k)[0])
    return lax.cond(jnp.all((covered >= top_p) | (top_p >= 1)), lambda: cut,
                    lambda: threshold(-jnp.sort(-scaled, axis=-1))[0])


@jax.jit
def sample_rows(logits, keys, temperature, top_p):
    """One token per row of logits [B, V] with the row's own temperature (0: argmax) and top_p, drawn with the
    row's own key: a request's draws do not depend on what it is batched with. Same rule as generate.sample_token.
    """
    scaled = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)[:, None]
    threshold = jnp.where(top_p[:, None] >= 1, -jnp.inf, nucleus_threshold(scaled, top_p))
    drawn = jax.vmap(jax.random.categorical)(keys, jnp.where(scaled < threshold, -jnp.inf, scaled))
    return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


step_keys = jax.jit(row_step_keys)


# ---- the batching worker ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Job:
    """One completion: the worker puts token ids on `out`, then the finish reason ('stop', 'length') or an
    exception."""
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    out: queue.Queue = dataclasses.field(default_factory=queue.Queue)
    cancelled: bool = False                       # set by the handler when its client went away
    completion_tokens: int = 0                    # counted as they are read


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def batch_bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()


class Batcher:
    """The worker thread that runs jobs in batches; `batch_sizes` records the rows of each batch it ran."""

    def __init__(self, model, params, eos_id: int, max_batch: int = 8, wait_s: float = 0.01):
        self.model, self.params, self.eos_id = decoding_model(model, params), params, eos_id
        self.max_batch, self.wait_s = max_batch, wait_s
        self.jobs: queue.Queue = queue.Queue()
        self.batch_sizes: list[int] = []
        self.thread = threading.Thread(target=self._run, name="minimind-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Job:
        self.jobs.put(job)
        return job

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()

    def _collect(self) -> list[Job] | None:
        first = self.jobs.get()
        batch, deadline = [first], time.monotonic() + self.wait_s
        while first is not None and len(batch) < self.max_batch:
            try:
                job = self.jobs.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is None:                       # closing: finish this batch, then stop
                self.jobs.put(None)
                break
            batch.append(job)
        return None if first is None else batch

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            try:
                self._decode([job for job in batch if not job.cancelled])
            except Exception as e:                 # the handlers report it; the worker keeps serving
                for job in batch:
                    job.out.put(e)

    def _decode(self, batch: list[Job]) -> None:
        if not batch:
            return
        self.batch_sizes.append(len(batch))
        B = batch_bucket(len(batch))
        P = round_up(max(len(j.prompt) for j in batch), PROMPT_BUCKET)
        N = round_up(max(j.max_tokens for j in batch), PROMPT_BUCKET)
        ids, mask = np.zeros((B, P), np.int32), np.zeros((B, P), np.int32)
        for r, job in enumerate(batch):                       # left padding: every prompt ends at P - 1
            ids[r, P - len(job.prompt):], mask[r, P - len(job.prompt):] = job.prompt, 1
        mask[len(batch):, -1] = 1                             # filler rows see one token, so no row is all padding
        temperature = jnp.asarray([j.temperature for j in batch] + [0.0] * (B - len(batch)), jnp.float32)
        top_p = jnp.asarray([j.top_p for j in batch] + [1.0] * (B - len(batch)), jnp.float32)
        keys = jnp.stack([jax.random.key(j.seed) for j in batch] + [jax.random.key(0)] * (B - len(batch)))

        logits, cache = prefill(self.model, self.params, jnp.asarray(ids), jnp.asarray(mask), length=P + N)
        live, counts = list(range(len(batch))), [0] * len(batch)
        for t in range(N):
            if t:
                logits, cache = decode_step(self.model, self.params, tokens, cache)
            tokens = sample_rows(logits, step_keys(keys, t), temperature, top_p)
            host = np.asarray(tokens)
            for r in list(live):
                job, token = batch[r], int(host[r])
                if job.cancelled or token == self.eos_id or counts[r] == job.max_tokens:
                    job.out.put("stop" if token == self.eos_id or job.cancelled else "length")
                    live.remove(r)
                    continue
                job.out.put(token)
                counts[r] += 1
            if not live:
                return
        for r in live:
            batch[r].out.put("length")


# ---- requests and responses -------------------------------------------------------------------------------------

class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def content_text(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts (the text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise BadRequest(f"{where}.content must be a string or a list of text parts", where)


def number(body: dict, name: str, default, low: float, high: float, kind=float):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise BadRequest(f"{name} must be a{'n integer' if kind is int else ' number'}", name)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be in [{low:g}, {high:g}], got {value}", name)
    return kind(value)


@dataclasses.dataclass
class Settings:
    """What every request shares: the model's name, the tokenizer and the limits and defaults."""
    model_name: str
    tokenizer: Tokenizer
    max_new_tokens: int = 512
    max_seq_len: int = 1024
    temperature: float = 0.85
    top_p: float = 0.85


def parse_request(body, s: Settings) -> tuple[Job, bool]:
    """OpenAI's chat request -> (job, stream); BadRequest naming the parameter at fault."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}]")
        turns.append({"role": m["role"], "content": content_text(m.get("content", ""), f"messages[{i}]")})
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = min(number({"max_tokens": max_tokens}, "max_tokens", s.max_new_tokens, 1, 2**31, int),
                     s.max_new_tokens)                          # the server's budget caps every request
    prompt = s.tokenizer.encode(s.tokenizer.apply_chat_template(turns, add_generation_prompt=True))
    job = Job(prompt=prompt[-s.max_seq_len:], max_tokens=max_tokens,
              temperature=number(body, "temperature", s.temperature, 0, 2),
              top_p=number(body, "top_p", s.top_p, 1e-6, 1),
              seed=number(body, "seed", secrets.randbits(31), -2**63, 2**63 - 1, int))
    return job, bool(body.get("stream", False))


def completion_texts(job: Job, tokenizer: Tokenizer):
    """Yield (new text, finish reason or None) as the job's tokens arrive; a multi-byte character is held back
    until whole. Raises what the worker raised."""
    ids, shown = [], ""
    while True:
        item = job.out.get()
        if isinstance(item, Exception):
            raise item
        if isinstance(item, str):
            job.completion_tokens = len(ids)
            yield tokenizer.decode(ids, skip_special_tokens=True)[len(shown):], item
            return
        ids.append(item)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            yield text[len(shown):], None
            shown = text


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Server"

    def log_message(self, format, *args):       # one line per request only when asked
        if self.server.verbose:
            super().log_message(format, *args)

    def send_json(self, status: int, obj) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status: int, message: str, param=None, kind="invalid_request_error") -> None:
        self.send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})

    def do_GET(self):
        path = self.path.split("?")[0]
        if path in ("/", "/index.html"):
            data = PAGE.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [self.model_card()]})
        elif path == f"/v1/models/{self.server.settings.model_name}":
            self.send_json(200, self.model_card())
        else:
            self.send_error_json(404, f"no route {path}", kind="not_found_error")

    def model_card(self) -> dict:
        return {"id": self.server.settings.model_name, "object": "model", "created": self.server.started,
                "owned_by": "minimind-jax"}

    def do_POST(self):
        if self.path.split("?")[0] != "/v1/chat/completions":
            return self.send_error_json(404, f"no route {self.path}", kind="not_found_error")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
            job, stream = parse_request(body, self.server.settings)
        except json.JSONDecodeError as e:
            return self.send_error_json(400, f"the request body is not JSON ({e})")
        except BadRequest as e:
            return self.send_error_json(400, str(e), e.param)
        self.server.batcher.submit(job)
        meta = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()),
                "model": self.server.settings.model_name}
        try:
            (self.stream if stream else self.complete)(job, meta)
        except (BrokenPipeError, ConnectionResetError):
            job.cancelled = True                     # the worker drops the row at its next token
        except Exception as e:
            job.cancelled = True
            if not stream:
                self.send_error_json(500, f"generation failed: {e}", kind="server_error")

    def complete(self, job: Job, meta: dict) -> None:
        text, finish = "", None
        for piece, finish in completion_texts(job, self.server.settings.tokenizer):
            text += piece
        usage = {"prompt_tokens": len(job.prompt), "completion_tokens": job.completion_tokens,
                 "total_tokens": len(job.prompt) + job.completion_tokens}
        self.send_json(200, {**meta, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]})

    def stream(self, job: Job, meta: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(delta: dict, finish=None) -> None:
            chunk = {**meta, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.chunk(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())

        send({"role": "assistant", "content": ""})
        for piece, finish in completion_texts(job, self.server.settings.tokenizer):
            if piece:
                send({"content": piece})
            if finish:
                send({}, finish)
        self.chunk(b"data: [DONE]\n\n")
        self.chunk(b"")                                  # the empty chunk ends the chunked body

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    """The HTTP server (a thread per connection) and the batching worker behind it."""
    daemon_threads = True

    def __init__(self, address, model, params, settings: Settings, max_batch: int = 8, batch_wait_s: float = 0.01,
                 verbose: bool = False):
        super().__init__(address, Handler)
        self.settings, self.verbose, self.started = settings, verbose, int(time.time())
        self.batcher = Batcher(model, params, settings.tokenizer.eos_id, max_batch, batch_wait_s)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimind_jax.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model_name", default=None, help="the id /v1/models reports (default: the weights' name)")
    p.add_argument("--temperature", type=float, default=0.85, help="when a request sets none")
    p.add_argument("--top_p", type=float, default=0.85, help="when a request sets none")
    p.add_argument("--max_batch", type=int, default=8, help="rows decoded together")
    p.add_argument("--batch_wait_ms", type=float, default=10.0, help="how long the first request waits for company")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.max_batch < 1 or args.max_new_tokens < 1:
        print("error: --max_batch and --max_new_tokens must be at least 1", file=sys.stderr)
        return 2
    opened = open_model(args)
    if opened is None:
        return 2
    tokenizer, model, params = opened
    source = args.weight if args.load_from in (None, "model") else args.load_from
    settings = Settings(args.model_name or Path(source).name, tokenizer, args.max_new_tokens, args.max_seq_len,
                        args.temperature, args.top_p)
    try:
        server = Server((args.host, args.port), model, params, settings, args.max_batch, args.batch_wait_ms / 1000,
                        args.verbose)
    except OSError as e:
        print(f"error: --host {args.host} --port {args.port}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"serving {settings.model_name} at {server.url}/ (OpenAI API under {server.url}/v1)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
