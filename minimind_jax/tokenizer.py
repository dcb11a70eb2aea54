"""The tokenizer: this project's SentencePiece BPE, or a byte-level BPE `tokenizer.json` (MiniMind-2's or -3's).

All give the same interface and the same special ids as MiniMind:
0 `<|endoftext|>` (pad/unk), 1 `<|im_start|>` (bos), 2 `<|im_end|>` (eos); nothing is added automatically.
Special tokens written in the text map to their ids, so the ChatML template can be encoded as plain text.

Each tokenizer knows its chat template. MiniMind-2's (the default, `apply_chat_template` below) opens with a
default system prompt; MiniMind-3's (`template3.py`) has tools and a think block in every assistant turn. A
`tokenizer.json` whose `tokenizer_config.json` holds the MiniMind-3 template gets the latter; the upstream
MiniMind-3 tokenizer ships in `data/sample3/tokenizer` (`Tokenizer.load(SAMPLE3_TOKENIZER_DIR)`).

Our SentencePiece model is trained lossless: identity normalisation, no dummy prefix, whitespace kept as is, digits
split, and byte fallback for anything unseen, so `decode(encode(s)) == s` for every string. The reasoning and tool
tags are single tokens (the reference's BPE spells each in several pieces).

    python -m minimind_jax.tokenizer train --input data/sample/pretrain.jsonl data/sample/sft.jsonl \
        --vocab_size 6400 --out data/sample/tokenizer
"""
import argparse
import hashlib
import io
import json
import re
import sys
from pathlib import Path

from minimind_jax import template3
from minimind_jax.paths import shipped

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")                       # ids 0, 1, 2
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>")
REASONING_TAGS = {2: TAG_TOKENS[:4], 3: ("<think>", "</think>")}     # by template generation
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"
DEFAULT_TOKENIZER_DIR = shipped("sample") / "tokenizer"
SAMPLE3_TOKENIZER_DIR = shipped("sample3") / "tokenizer"
MINIMIND_TOKENIZER_DIR = shipped("minimind_tokenizer")       # MiniMind-2's own BPE
NAMED_TOKENIZERS = {"minimind": MINIMIND_TOKENIZER_DIR, "minimind3": SAMPLE3_TOKENIZER_DIR}
SP_MODEL = "tokenizer.model"
HF_JSON = "tokenizer.json"
HF_CONFIG = "tokenizer_config.json"

_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
# SentencePiece shows spaces as U+2581 '▁' and turns every '▁' back into a space when decoding, so a literal '▁' in
# the text would come back as ' '. We route it around the model as its three UTF-8 bytes (byte-fallback pieces).
_META_SPACE = "\u2581"


class Tokenizer:
    """encode / decode / chat template over one of two backends; build it with `Tokenizer.load(path)`."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, sp=None, hf=None, name: str = "", generation: int = 2):
        if generation not in REASONING_TAGS:
            raise ValueError(f"{name}: no MiniMind-{generation} chat template (there are 2 and 3)")
        self._sp, self._hf, self.name, self.generation = sp, hf, name, generation
        if sp is not None:
            self.vocab_size = sp.get_piece_size()
            self._meta_space_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode()]
        else:
            self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        # What the token cache is keyed by: the model itself, not the path it was read from.
        self.fingerprint = hashlib.sha256(self._serialized()).hexdigest()
        for i, t in enumerate(SPECIAL_TOKENS):
            if self.token_to_id(t) != i:
                raise ValueError(f"{name}: {t!r} must have id {i}, not {self.token_to_id(t)}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path=None) -> "Tokenizer":
        """A directory holding `tokenizer.model` (ours) or `tokenizer.json` (MiniMind / Hugging Face), or either file,
        or a shipped one by name: 'minimind' (MiniMind-2's own BPE), 'minimind3' (MiniMind-3's). None -> this
        project's SentencePiece tokenizer shipped with the sample data (not MiniMind's: lossless, tags as single
        tokens)."""
        path = Path(NAMED_TOKENIZERS.get(path, path)) if path is not None else DEFAULT_TOKENIZER_DIR
        if path.is_dir():
            found = [f for f in (path / SP_MODEL, path / HF_JSON) if f.exists()]
            if not found:
                raise OSError(f"{path}: no {SP_MODEL} or {HF_JSON} here")
            path = found[0]
        elif not path.exists():
            raise OSError(f"{path}: no such file or directory")
        if path.suffix == ".model":
            import sentencepiece as spm
            backend = lambda: {"sp": spm.SentencePieceProcessor(model_file=str(path))}
        else:
            try:
                from tokenizers import Tokenizer as HFTokenizer
            except ImportError:
                raise ImportError(f"{path}: a tokenizer.json needs the `tokenizers` package: "
                                  f"pip install tokenizers") from None
            backend = lambda: {"hf": HFTokenizer.from_file(str(path))}
        try:
            model = backend()
        except Exception as e:          # both libraries raise bare RuntimeError/Exception with multi-line text
            raise ValueError(f"{path}: not a readable tokenizer ({str(e).strip().splitlines()[-1]})") from None
        return cls(**model, name=str(path), generation=template_generation(path.with_name(HF_CONFIG)))

    def _serialized(self) -> bytes:
        return self._sp.serialized_model_proto() if self._sp is not None else self._hf.to_str().encode()

    def __getstate__(self):          # picklable, so that tokenizing worker processes get the same model
        return {"kind": "sp" if self._sp is not None else "hf", "model": self._serialized(), "name": self.name,
                "generation": self.generation}

    def __setstate__(self, state):
        common = {"name": state["name"], "generation": state.get("generation", 2)}
        if state["kind"] == "sp":
            import sentencepiece as spm
            self.__init__(sp=spm.SentencePieceProcessor(model_proto=state["model"]), **common)
        else:
            from tokenizers import Tokenizer as HFTokenizer
            self.__init__(hf=HFTokenizer.from_str(state["model"].decode()), **common)

    def token_to_id(self, token: str) -> int | None:
        if self._hf is not None:
            return self._hf.token_to_id(token)
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != SPECIAL_TOKENS[0] else i

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS/EOS added; special tokens in the text become their ids."""
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=False).ids
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of every text; one call into the backend, which spreads the work over its own threads."""
        if self._hf is not None:
            return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]
        # Cut every text at special tokens and literal '▁' into plain segments, encode all segments at once,
        # then stitch each text back together: a plan entry is a fixed id list or the index of a segment.
        segments, plans = [], []
        for text in texts:
            plan = []
            for i, part in enumerate(_SPECIAL_RE.split(text)):
                if i % 2:                               # odd parts are the separators: a special token
                    plan.append([SPECIAL_TOKENS.index(part)])
                    continue
                for j, chunk in enumerate(part.split(_META_SPACE)):
                    if j:
                        plan.append(self._meta_space_ids)
                    if chunk:
                        plan.append(len(segments))
                        segments.append(chunk)
            plans.append(plan)
        encoded = self._sp.encode(segments) if segments else []
        out = []
        for plan in plans:
            ids = []
            for p in plan:
                ids.extend(encoded[p] if isinstance(p, int) else p)
            out.append(ids)
        return out

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; the inverse of `encode`. Special tokens are spelled out unless skipped."""
        ids = [int(i) for i in ids]
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)
        out, run = [], []
        for i in ids + [None]:
            if i is None or i < len(SPECIAL_TOKENS):    # flush the ordinary run before a special token
                out.append(self._sp.decode(run))
                run = []
                if i is not None and not skip_special_tokens:
                    out.append(SPECIAL_TOKENS[i])
            else:
                run.append(i)
        return "".join(out)

    def id_to_piece(self, i: int) -> str:
        return self._hf.id_to_token(i) if self._hf is not None else self._sp.id_to_piece(i)

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False, *,
                            tools: list | None = None, open_thinking: bool = False) -> str:
        """The text of `messages` in this tokenizer's chat template.

        MiniMind-2: `<|im_start|>system\\n{system}<|im_end|>\\n` (the first message if it is a system one, else the
        default), then `<|im_start|>{role}\\n{content}<|im_end|>\\n` per turn, then `<|im_start|>assistant\\n` if
        asked; it has no tools and no thinking switch. MiniMind-3: see `template3.py`; the generation prompt opens
        the think block when `open_thinking`, else closes it empty."""
        if self.generation == 3:
            return template3.render(messages, tools, add_generation_prompt, open_thinking)
        if tools:
            raise ValueError(f"{self.name}: the MiniMind-2 chat template has no tools")
        return apply_chat_template(messages, add_generation_prompt)

    def reasoning_tag_ids(self) -> list[int]:
        """The distinct ids the reasoning tags encode to (sorted): `<think>`, `</think>`, and for MiniMind-2 also
        `<answer>`, `</answer>`."""
        return sorted({i for tag in REASONING_TAGS[self.generation] for i in self.encode(tag)})

    def __repr__(self) -> str:
        kind = "sentencepiece" if self._sp is not None else "tokenizers"
        return f"Tokenizer({self.name!r}, {kind}, vocab_size={self.vocab_size}, generation={self.generation})"


def template_generation(config_path: Path) -> int:
    """Which chat template a tokenizer is for, from the template text in its tokenizer_config.json: 3 for
    MiniMind-3's, recognised by its thinking switch `open_thinking`; 2 otherwise (no config, or another template)."""
    try:
        template = json.loads(Path(config_path).read_text(encoding="utf-8")).get("chat_template") or ""
    except (OSError, ValueError, AttributeError):
        return 2
    if isinstance(template, list):      # named templates: [{"name", "template"}, ...]
        template = " ".join(t.get("template", "") for t in template if isinstance(t, dict))
    return 3 if isinstance(template, str) and "open_thinking" in template else 2


def apply_chat_template(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The reference's chat template, for the roles system, user, assistant and tool (see Tokenizer)."""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    else:
        system = DEFAULT_SYSTEM_PROMPT
    text = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    for k, m in enumerate(messages):
        role, content = m["role"], m["content"] if isinstance(m["content"], str) else ""
        if role == "tool":                          # consecutive tool results share one user turn
            first = k == 0 or messages[k - 1]["role"] != "tool"
            last = k == len(messages) - 1 or messages[k + 1]["role"] != "tool"
            text.append(("<|im_start|>user" if first else "") + f"\n<tool_response>\n{content}\n</tool_response>"
                        + ("<|im_end|>\n" if last else ""))
        else:
            text.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    if add_generation_prompt:
        text.append("<|im_start|>assistant\n")
    return "".join(text)


# ---------------------------------------------------------------------- training
def iter_jsonl_text(paths):
    """Every string a jsonl corpus holds: pretrain `text`, SFT/RLAIF turns, DPO sides (templated: the model must
    learn to spell the template as well)."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                if "text" in row:
                    yield row["text"]
                for key in ("conversations", "chosen", "rejected"):
                    if key in row:
                        yield apply_chat_template(row[key])


def train(inputs, vocab_size: int, out_dir, character_coverage: float = 0.995,
          max_sentence_length: int = 1 << 14) -> Path:
    """Train the SentencePiece BPE model on jsonl files; writes out_dir/tokenizer.model (+ .vocab)."""
    import sentencepiece as spm
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    # SentencePiece reads one "sentence" per string; long ones are skipped, so cut text at newlines first.
    sentences = (s for text in iter_jsonl_text(inputs) for s in _strip_special(text).split("\n") if s)
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences, model_writer=model, model_type="bpe", vocab_size=vocab_size,
        character_coverage=character_coverage, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        split_by_whitespace=True, max_sentence_length=max_sentence_length, train_extremely_large_corpus=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_piece=SPECIAL_TOKENS[0], bos_piece=SPECIAL_TOKENS[1], eos_piece=SPECIAL_TOKENS[2],
        # '\n' is its own piece so that a turn's content always starts on a token boundary (the SFT loss mask
        # skips exactly one token after `<|im_start|>assistant`), and the tags are single ids.
        user_defined_symbols=list(TAG_TOKENS) + ["\n"],
        input_sentence_size=2_000_000, shuffle_input_sentence=True, num_threads=2, minloglevel=2)
    path = out_dir / SP_MODEL
    path.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    (out_dir / "tokenizer.vocab").write_text(
        "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())), encoding="utf-8")
    return path


def _strip_special(text: str) -> str:
    return _SPECIAL_RE.sub("\n", text)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minimind_jax.tokenizer", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the SentencePiece BPE tokenizer on jsonl files")
    t.add_argument("--input", nargs="+", required=True, help="jsonl files (pretrain/SFT/DPO/RLAIF formats)")
    t.add_argument("--vocab_size", type=int, default=6400)
    t.add_argument("--out", required=True, help="output directory (tokenizer.model is written there)")
    e = sub.add_parser("encode", help="print the ids and pieces of a string")
    e.add_argument("text")
    e.add_argument("--tokenizer", default=None)
    a = p.parse_args(argv)
    if a.cmd == "train":
        for f in a.input:
            if not Path(f).is_file():
                sys.exit(f"--input {f}: no such file")
        try:
            path = train(a.input, a.vocab_size, a.out)
        except RuntimeError as e:       # SentencePiece's messages start with its C++ file and line: keep the reason
            sys.exit(f"tokenizer train: {str(e).rsplit('] ', 1)[-1]}")
        print(f"wrote {path} ({Tokenizer.load(path).vocab_size} ids)")
    else:
        tok = Tokenizer.load(a.tokenizer)
        ids = tok.encode(a.text)
        print(ids)
        print([tok.id_to_piece(i) for i in ids])


if __name__ == "__main__":
    main()
