"""Bad input: every problem is one line `path:line: problem` (non-zero exit from the CLI), or skipped and counted."""
import pickle
import subprocess
import sys

import pytest

from minimind_jax.data import DataError, DPODataset, PretrainDataset, RLAIFDataset, SFTDataset, cache, jsonl
from minimind_jax.tokenizer import Tokenizer

GOOD = b'{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
KINDS = {"pretrain": PretrainDataset, "sft": SFTDataset, "dpo": DPODataset, "rlaif": RLAIFDataset}

CASES = {  # name: (kind, file bytes, line, words in the message)
    "malformed JSON": ("sft", GOOD + b'{"conversations": [\n', 2, "malformed JSON"),
    "trailing garbage": ("pretrain", b'{"text": "a"} x\n', 1, "malformed JSON"),
    "not an object": ("pretrain", b'["text"]\n', 1, "expected a JSON object"),
    "missing key": ("pretrain", b'{"text": "a"}\n{"txt": "b"}\n', 2, 'no "text" key'),
    "wrong type": ("pretrain", b'{"text": 3}\n', 1, '"text" must be a str'),
    "missing conversations": ("sft", GOOD * 3 + b'{"messages": []}\n', 4, 'no "conversations" key'),
    "wrong role": ("sft", b'{"conversations": [{"role": "bot", "content": "x"}]}\n', 1, "role 'bot' is not one of"),
    "no content": ("sft", b'{"conversations": [{"role": "user"}]}\n', 1, '"content" missing'),
    "empty conversation": ("sft", b'{"conversations": []}\n', 1, "empty list"),
    "dpo missing side": ("dpo", b'{"chosen": [{"role": "user", "content": "x"}]}\n', 1, 'no "rejected" key'),
    "rlaif turn not an object": ("rlaif", b'{"conversations": ["hi"]}\n', 1, "must be an object"),
    "empty file": ("pretrain", b"", 1, "empty file"),
    "only blank lines": ("sft", b"\n  \n\n", 1, "empty file"),
    "non-UTF-8": ("pretrain", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', 2, "not UTF-8: byte 0xe9 at column 14"),
}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_naming_file_and_line(tok, tmp_path, name):
    kind, content, line, words = CASES[name]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        KINDS[kind](path, tok, 32, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}:{line}: ") and words in msg, msg
    assert not any((tmp_path / "cache").glob("*")), "a failed build must leave no cache behind"


def test_over_long_line(tok, tmp_path):
    path = tmp_path / "long.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "fine"}\n')
        f.write(b'{"text": "' + b"x" * (jsonl.MAX_LINE_BYTES + 10) + b'"}\n')        # just over: found by the parser
        f.write(b'{"text": "middle"}\n')
        f.write(b"y" * (3 * jsonl.MAX_LINE_BYTES) + b"\n")          # far over: the reader drops it without holding it
        f.write(b'{"text": "after"}')                                  # no final newline
    with pytest.raises(DataError, match=rf"^{path}:2: line longer than 8,388,608 bytes \(MAX_LINE_BYTES\)"):
        PretrainDataset(path, tok, 16, cache_dir=tmp_path)
    ds = PretrainDataset(path, tok, 16, cache_dir=tmp_path, skip_bad_lines=True)
    assert [tok.decode(ds.cache.seq(i)) for i in range(len(ds))] == ["fine", "middle", "after"]
    assert ds.cache.meta["skipped"] == 2


def test_line_numbers_across_chunks(tok, tmp_path, monkeypatch):
    """Tiny chunks: the reported line is the file's, whichever chunk (or worker) found it."""
    monkeypatch.setattr(cache, "CHUNK_BYTES", 100)
    path = tmp_path / "many.jsonl"
    path.write_bytes(GOOD * 57 + b"{oops\n" + GOOD * 5)
    with pytest.raises(DataError, match=rf"^{path}:58: malformed JSON"):
        SFTDataset(path, tok, 32, cache_dir=tmp_path)


def test_skip_bad_lines_skips_counts_and_reports(tok, tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "one"}\n{bad\n{"text": "two"}\n{"txt": 1}\n\n{"text": "three"}\n')
    ds = PretrainDataset(path, tok, 16, cache_dir=tmp_path, skip_bad_lines=True)
    assert [tok.decode(ds.cache.seq(i)) for i in range(len(ds))] == ["one", "two", "three"]
    warning = capsys.readouterr().err.strip().splitlines()[-1]
    assert warning == f"warning: {path}: skipped 2 bad lines (first: line 2: malformed JSON: " \
                      f"Expecting property name enclosed in double quotes at column 2)"
    all_bad = tmp_path / "all_bad.jsonl"
    all_bad.write_bytes(b"{\n[\n")
    with pytest.raises(DataError, match=rf"^{all_bad}:1: no valid rows: all 2 lines are bad"):
        PretrainDataset(all_bad, tok, 16, cache_dir=tmp_path, skip_bad_lines=True)


def test_cli_exit_status(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD + b'{"conversations": [{"role": "robot", "content": "x"}]}\n')
    cmd = [sys.executable, "-m", "minimind_jax.data", "sft", str(path), "--cache_dir", str(tmp_path / "c")]
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == \
        f"{path}:2: conversations[0]: role 'robot' is not one of system, user, assistant"
    ok = subprocess.run(cmd + ["--skip_bad_lines"], capture_output=True, text=True)
    assert ok.returncode == 0 and "1 rows" in ok.stdout and "1 bad lines skipped" in ok.stdout
    assert f"warning: {path}: skipped 1 bad line" in ok.stderr


def test_data_error_pickles():
    """Errors cross from tokenizing worker processes to the parent."""
    e = pickle.loads(pickle.dumps(DataError("a.jsonl", 3, "bad")))
    assert (str(e), e.line) == ("a.jsonl:3: bad", 3)
