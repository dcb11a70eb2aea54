"""Reading jsonl without trusting it: whole lines streamed in chunks, every problem a one-line `path:line: problem`.

Each data set turns a row (one JSON object) into the text(s) it tokenizes; the checks here are what those rows
must look like (SPEC.md §3). A row that fails raises `BadRow` (no location: the caller knows the line).
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MAX_LINE_BYTES = 8 << 20            # a longer line is not a training row but a broken file (e.g. missing newlines)
ROLES = ("system", "user", "assistant")


class DataError(Exception):
    """A bad input file; str() is one line: `path:line: problem`."""

    def __init__(self, path, line: int, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{path}:{line}: {problem}")

    def __reduce__(self):            # picklable across worker processes
        return DataError, (self.path, self.line, self.problem)


class BadRow(ValueError):
    """What is wrong with one row (the line number is added by whoever read it)."""


@dataclass
class Chunk:
    """Whole lines of a file: `data` starts at byte `offset`, which is the start of line `first_line` (1-based)."""
    offset: int
    first_line: int
    data: bytes


def read_chunks(path, chunk_bytes: int = 1 << 20) -> Iterator[Chunk | DataError]:
    """The file as chunks of about `chunk_bytes` that end at a newline, streamed (never the whole file in memory).

    A line longer than MAX_LINE_BYTES is not read into memory: it comes through as a DataError in the stream,
    for the caller to raise or count, and reading resumes after it.
    """
    path = Path(path)
    with open(path, "rb") as f:
        offset, line, carry, skipping = 0, 1, b"", False
        while block := f.read(chunk_bytes):
            if skipping:                                # inside an over-long line: drop bytes up to its newline
                cut = block.find(b"\n")
                if cut < 0:
                    offset += len(block)
                    continue
                offset, line, block, skipping = offset + cut + 1, line + 1, block[cut + 1:], False
            buf = carry + block
            cut = buf.rfind(b"\n") + 1
            if cut == 0 and len(buf) > MAX_LINE_BYTES:
                yield DataError(path, line, f"line longer than {MAX_LINE_BYTES:,} bytes (MAX_LINE_BYTES); "
                                            f"is the file missing newlines?")
                offset, carry, skipping = offset + len(buf), b"", True
                continue
            if cut:
                yield Chunk(offset, line, buf[:cut])
                offset, line = offset + cut, line + buf.count(b"\n", 0, cut)
            carry = buf[cut:]
        if carry and not skipping:                      # a last line without a final newline
            yield Chunk(offset, line, carry)


def parse_line(raw: bytes) -> dict | None:
    """The JSON object on one line (None for a blank line)."""
    if len(raw) > MAX_LINE_BYTES:
        raise BadRow(f"line longer than {MAX_LINE_BYTES:,} bytes (MAX_LINE_BYTES): {len(raw):,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRow(f"not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}") from None
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRow(f"malformed JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(row, dict):
        raise BadRow(f"expected a JSON object, got {type(row).__name__}")
    return row


def field(row: dict, key: str, kind: type, what: str):
    if key not in row:
        raise BadRow(f'no "{key}" key ({what}); keys here: {", ".join(map(repr, row)) or "none"}')
    if not isinstance(row[key], kind):
        raise BadRow(f'"{key}" must be a {kind.__name__}, not {type(row[key]).__name__}')
    return row[key]


def messages(row: dict, key: str, *, check_roles: bool = True) -> list[dict]:
    """row[key] as a non-empty list of {"role", "content"} turns with roles system/user/assistant."""
    turns = field(row, key, list, 'a list of {"role", "content"} turns')
    if not turns:
        raise BadRow(f'"{key}" is an empty list')
    for i, m in enumerate(turns):
        if not isinstance(m, dict):
            raise BadRow(f'{key}[{i}] must be an object with "role" and "content"')
        if not isinstance(m.get("content"), str):
            raise BadRow(f'{key}[{i}]: "content" missing or not a string')
        if check_roles or "role" in m:
            role = m.get("role")
            if role not in ROLES:
                raise BadRow(f'{key}[{i}]: role {role!r} is not one of {", ".join(ROLES)}')
    return turns
