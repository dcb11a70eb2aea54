"""The token cache: built once, keyed by what it depends on, streamed in chunks, the same with worker processes."""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minimind_jax.data import PretrainDataset, RLAIFDataset, SFTDataset, cache
from minimind_jax.data.jsonl import Chunk, read_chunks
from minimind_jax.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


def rows_file(path, n, start=0):
    rows = [{"conversations": [{"role": "user", "content": f"问题 {i}: what is {i} + {i}?"},
                               {"role": "assistant", "content": f"{2 * i}"}]} for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@given(lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
       chunk_bytes=st.integers(1, 64), final_newline=st.booleans())
def test_read_chunks_streams_whole_lines(tmp_path_factory, lines, chunk_bytes, final_newline):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path = tmp_path_factory.mktemp("chunks") / "f.jsonl"
    path.write_bytes(data)
    chunks = list(read_chunks(path, chunk_bytes))
    assert all(isinstance(c, Chunk) for c in chunks)
    assert b"".join(c.data for c in chunks) == data
    for c in chunks:
        assert data[c.offset:c.offset + len(c.data)] == c.data
        assert c.first_line == data[:c.offset].count(b"\n") + 1
        assert c.offset == 0 or data[c.offset - 1:c.offset] == b"\n"             # chunks start at a line


def test_cache_is_reused_and_stored_as_uint16(tok, tmp_path, monkeypatch):
    path = rows_file(tmp_path / "s.jsonl", 20)
    first = SFTDataset(path, tok, 32, cache_dir=tmp_path / "c")
    assert first.cache.ids.dtype == np.uint16 and isinstance(first.cache.ids, np.memmap)
    monkeypatch.setattr(cache, "build", lambda *a, **k: pytest.fail("rebuilt a valid cache"))
    second = SFTDataset(path, tok, 32, cache_dir=tmp_path / "c")
    assert second.cache.dir == first.cache.dir
    for k, v in first.batch(np.arange(20)).items():
        np.testing.assert_array_equal(v, second.batch(np.arange(20))[k])


def test_cache_key_follows_content_tokenizer_format_and_length(tok, tmp_path, shared_path):
    path = rows_file(tmp_path / "s.jsonl", 5)
    d = lambda ds: ds.cache.dir
    base = d(SFTDataset(path, tok, 32, cache_dir=tmp_path))
    assert d(SFTDataset(path, tok, 64, cache_dir=tmp_path)) != base                      # max_seq_len
    assert d(RLAIFDataset(path, tok, 32, cache_dir=tmp_path)) != base                    # row format
    ref = Tokenizer.load(shared_path("minimind_tokenizer"))
    assert d(SFTDataset(path, ref, 32, cache_dir=tmp_path)) != base                      # tokenizer
    rows_file(path, 5, start=1)                                                          # content
    changed = SFTDataset(path, tok, 32, cache_dir=tmp_path)
    assert d(changed) != base
    assert tok.decode(changed.cache.seq(0)).count("问题 1:") == 1


def test_parallel_build_equals_serial(tok, tmp_path, monkeypatch):
    """Worker processes (spawned) and small chunks give byte-identical caches."""
    monkeypatch.setattr(cache, "CHUNK_BYTES", 512)
    path = rows_file(tmp_path / "s.jsonl", 300)
    serial = RLAIFDataset(path, tok, 24, cache_dir=tmp_path / "serial", workers=1).cache
    parallel = RLAIFDataset(path, tok, 24, cache_dir=tmp_path / "parallel", workers=2).cache
    for name in ("ids.bin", "offsets.npy", "strings.bin", "string_offsets.npy"):
        assert (serial.dir / name).read_bytes() == (parallel.dir / name).read_bytes(), name
    assert len(serial) == 300 and serial.strings(299)[1] == "598"


def test_truncation_is_counted(tok, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"text": "word " * n}) + "\n" for n in (1, 50, 2, 80)))
    ds = PretrainDataset(path, tok, 16, cache_dir=tmp_path)
    assert ds.cache.meta["truncated"] == 2 and np.diff(ds.cache.offsets).max() == 16
