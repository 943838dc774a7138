"""Tokenizers (cpp/src/tokenizer*.cpp, unicode*.cpp) against llama.cpp's outputs and independent
implementations.

References, by strength:
- llama.cpp's own tokenizations of the real models (shared/reference/*_tokenize.json and the
  prompt_ids of *_greedy.json): must match exactly.
- HF `tokenizers` (a Rust implementation) built from the same GGUF vocabulary and merges, with
  the pre-tokenizer pattern llama.cpp uses for the model, on thousands of seeded random strings
  (byte-level BPE: SmolLM2, Qwen2.5); texts with a byte the vocabulary has no token for are left
  out, since there HF and llama.cpp differ (see test_unrepresentable_bytes_block_merges).
- For Gemma's SentencePiece-style tokenizer there is no equivalent in HF `tokenizers` (its
  Unigram model is a Viterbi search; llama.cpp merges the best-scoring pair greedily), so the
  reference is a plain Python re-implementation of llama.cpp's documented algorithm below
  (`SpmReference`), which rescans all pairs at every step instead of keeping a queue.
- The pre-tokenizer patterns alone against the regex engine of HF `tokenizers` (no model).

The GGUF vocabulary for the references is read by `read_gguf_metadata`, a few lines of struct
parsing here, so neither tova's GGUF reader nor its tokenizer feeds its own oracle.
"""
from __future__ import annotations

import json
import mmap
import random
import struct
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from tova import _core

SPACE = "\u2581"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The patterns llama.cpp uses (the qwen2 one is its ASCII case-folding form of Qwen's
# "(?i:'s|'t|'re|'ve|'m|'ll|'d)|...", which is what llama.cpp and tova implement).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_FAMILY = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|"
                  r"[^\r\n\p{L}\p{N}]?\p{L}+|@NUMBERS@| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
                  r"\s+(?!\S)|\s+")
QWEN2_PATTERN = _LLAMA3_FAMILY.replace("@NUMBERS@", r"\p{N}")
LLAMA3_PATTERN = _LLAMA3_FAMILY.replace("@NUMBERS@", r"\p{N}{1,3}")
DEFAULT_PATTERNS = [r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]"]

# ------------------------------------------------------------------------------ GGUF metadata


def read_gguf_metadata(path) -> dict:
    """The metadata of a GGUF file (v2/v3), arrays of numbers as numpy arrays."""
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
              10: "<Q", 11: "<q", 12: "<d"}
    dtype = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
             10: "<u8", 11: "<i8", 12: "<f8"}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        assert bytes(buf[:4]) == b"GGUF"
        pos = 24
        n_kv = struct.unpack_from("<Q", buf, 16)[0]

        def string():
            nonlocal pos
            n = struct.unpack_from("<Q", buf, pos)[0]
            s = bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", "replace")
            pos += 8 + n
            return s

        def value(t):
            nonlocal pos
            if t == 8:
                return string()
            if t == 9:
                et, n = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if et == 8:
                    return [string() for _ in range(n)]
                if et == 9:
                    return [value(struct.unpack_from("<I", buf, pos)[0]) for _ in range(n)]
                a = np.frombuffer(buf, dtype=dtype[et], count=n, offset=pos).copy()
                pos += a.nbytes
                return a
            v = struct.unpack_from(scalar[t], buf, pos)[0]
            pos += struct.calcsize(scalar[t])
            return v

        meta = {}
        for _ in range(n_kv):
            key = string()
            t = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
            meta[key] = value(t)
        del buf
    return meta


@lru_cache(maxsize=None)
def vocab_of(path: str) -> dict:
    m = read_gguf_metadata(path)
    return {k[len("tokenizer.ggml."):]: v for k, v in m.items()
            if k.startswith("tokenizer.ggml.")}


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return _core.Tokenizer(str(smollm2_path))


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return _core.Tokenizer(str(gemma3_path))


@pytest.fixture(scope="module")
def qwen05(qwen05_path):
    return _core.Tokenizer(str(qwen05_path))


# ------------------------------------------------------------------------------ random text

_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\x0b\x0c",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'Re",
    "éèêëàâäôöûüçñÉÀßøÅ", "e\u0301", "a\u0308\u0327",
    "東京日本語中文字漢", "ひらがなカタカナ", "안녕하세요", "Привет мир", "αβγδΩ",
    "مرحبا بالعالم", "שלום", "नमस्ते", "สวัสดี",
    "🙂👍🏽🇫🇷", "👨\u200d👩\u200d👧", "\u200b\u200d\ufeff",
    "\u00a0", "\u3000", "\u2009", "\u0085", "\u2028", "\x1c\x1f", "\x04\x1d\U0005164b",
    "٣४๓½Ⅻ²³", "ǅᾼ", "—–…«»“”„‘’",
    " hello", " world", " the", "ing", " 2024", "...",
]


def _assigned(cp: int) -> bool:
    # Code points assigned in the standard library's (older) Unicode version have the same
    # classes in every newer table, so random ones cannot expose a Unicode-version difference
    # between the implementations under comparison.
    return unicodedata.category(chr(cp)) not in ("Cn", "Cs")


def random_text(rng: random.Random, specials=()) -> str:
    parts = []
    for _ in range(rng.randint(1, 16)):
        r = rng.random()
        if specials and r < 0.06:
            parts.append(rng.choice(specials))
        elif r < 0.18:
            while True:
                cp = rng.choice([rng.randrange(0x80, 0x800), rng.randrange(0x800, 0x10000),
                                 rng.randrange(0x10000, 0x30000)])
                if _assigned(cp):
                    parts.append(chr(cp))
                    break
        else:
            pool = rng.choice(_POOLS)
            k = rng.randint(1, min(len(pool), 6))
            start = rng.randrange(len(pool) - k + 1)
            parts.append(pool[start:start + k] if rng.random() < 0.5 else
                         "".join(rng.choice(pool) for _ in range(k)))
    return "".join(parts)


# ------------------------------------------------------------------------------ llama.cpp outputs


def _model_cases(reference_dir: Path, name: str):
    return json.loads((reference_dir / f"{name}_tokenize.json").read_text("utf-8"))["cases"]


@pytest.mark.model
@pytest.mark.parametrize("name", ["smollm2", "gemma3", "qwen05"])
def test_matches_llama_cpp_tokenize_cases(name, request, reference_dir):
    tok = request.getfixturevalue(name)
    data = json.loads((reference_dir / f"{name}_tokenize.json").read_text("utf-8"))
    assert data["add_special"] is True  # BOS exactly where the model's metadata asks
    for case in data["cases"]:
        text = case["text"]
        assert tok.encode(text, tok.add_bos, False) == case["ids"], text
        assert tok.encode(text, tok.add_bos, True) == case["ids_special"], text


@pytest.mark.model
@pytest.mark.parametrize("name,greedy", [("smollm2", "smollm2"), ("gemma3", "gemma3"),
                                         ("qwen05", "qwen05"),
                                         # Qwen2.5-Coder 1.5B has the 0.5B's tokenizer
                                         ("qwen05", "qwen15")])
def test_matches_llama_cpp_prompt_ids(name, greedy, request, reference_dir):
    tok = request.getfixturevalue(name)
    data = json.loads((reference_dir / f"{greedy}_greedy.json").read_text("utf-8"))
    assert data["cases"]
    for case in data["cases"]:
        assert tok.encode(case["prompt"], tok.add_bos, False) == case["prompt_ids"], case["prompt"]


@pytest.mark.model
def test_bos_only_where_the_model_asks(smollm2, gemma3, qwen05, reference_dir):
    assert (smollm2.add_bos, gemma3.add_bos, qwen05.add_bos) == (False, True, False)
    assert gemma3.bos_id == 2
    for case in _model_cases(reference_dir, "gemma3"):
        assert case["ids"][0] == gemma3.bos_id
        assert gemma3.encode(case["text"], False, False) == case["ids"][1:]
    assert smollm2.encode("Hello world", True, False) == [smollm2.bos_id, 19556, 905]


# ------------------------------------------------------------------------------ properties


@pytest.mark.model
@pytest.mark.parametrize("name", ["smollm2", "gemma3", "qwen05"])
def test_round_trip(name, request):
    tok = request.getfixturevalue(name)
    rng = random.Random(20240601)
    texts = [random_text(rng) for _ in range(400)]
    texts += ["", " ", "\n", "a" * 3000, " " * 100 + "x", "🙂" * 50, "e\u0301" * 20,
              "".join(chr(c) for c in range(0x20, 0x7F)),
              "".join(chr(rng.randrange(0x10000, 0x10FFFF)) for _ in range(200)
                      ).encode("utf-8", "replace").decode("utf-8", "replace")]
    # Bytes whose GPT-2 character has no token (SmolLM2 lacks 21, e.g. 0xF1, which only starts
    # code points of planes 4-11) are dropped, as llama.cpp and HF tokenizers drop them.
    chars = _byte_chars()
    missing = {b for b in range(256) if tok.find_token(chars[b]) < 0} if tok.model == "gpt2" \
        else set()
    assert len(missing) == {"smollm2": 21, "gemma3": 0, "qwen05": 0}[name]
    for text in texts:
        want = bytes(b for b in text.encode("utf-8") if b not in missing)
        for parse_special in (False, True):
            ids = tok.encode(text, False, parse_special)
            assert all(0 <= i < tok.n_vocab for i in ids)
            assert tok.decode(ids, special=True) == want, repr(text)


@pytest.mark.model
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_invalid_utf8(name, request):
    tok = request.getfixturevalue(name)
    bad = b"ok \xff\xfe \xe2\x82 \xf0\x9f\x99 \xc0\xaf \xed\xa0\x80 end"
    ids = tok.encode(bad, False, False)
    # Each invalid subpart is tokenized as U+FFFD (BPE: as llama.cpp does).
    assert tok.decode(ids) == bad.decode("utf-8", "replace").encode("utf-8")
    # Decoding never validates: a lone piece of a character comes back as raw bytes.
    emoji_ids = tok.encode("🙂", False, False)
    assert b"".join(tok.token_bytes(i) for i in emoji_ids) == "🙂".encode()
    with pytest.raises(ValueError):
        tok.decode([tok.n_vocab])
    with pytest.raises(ValueError):
        tok.token_bytes(-1)


@pytest.mark.model
def test_special_tokens_only_when_parsed(smollm2, gemma3, qwen05):
    text = "<|im_start|>user\nhi<|im_end|>"
    with_special = smollm2.encode(text, False, True)
    assert with_special[0] == smollm2.find_token("<|im_start|>") == 1
    assert with_special[-1] == smollm2.find_token("<|im_end|>") == 2
    plain = smollm2.encode(text, False, False)
    assert 1 not in plain and 2 not in plain
    assert smollm2.decode(plain) == text.encode()
    # Control tokens decode to nothing unless asked for.
    assert smollm2.decode(with_special) == b"user\nhi"
    assert smollm2.decode(with_special, special=True) == text.encode()

    sot = gemma3.find_token("<start_of_turn>")
    assert sot == 105
    assert gemma3.encode("<start_of_turn>user", False, True)[0] == sot
    assert sot not in gemma3.encode("<start_of_turn>user", False, False)
    # User-defined tokens ("\t", runs of spaces or newlines in Gemma; <tool_call> in Qwen) are
    # always matched, as llama.cpp does, parse_special or not.
    tab = gemma3.find_token("\t")
    assert gemma3.token_type(tab) == USER_DEFINED
    assert gemma3.encode("a\tb", False, False) == gemma3.encode("a\tb", False, True)
    assert tab in gemma3.encode("a\tb", False, False)
    tool = qwen05.find_token("<tool_call>")
    assert qwen05.token_type(tool) == USER_DEFINED
    assert qwen05.encode("x<tool_call>y", False, False)[1] == tool
    assert qwen05.find_token("no such token") == -1


@pytest.mark.model
def test_end_of_generation(smollm2, gemma3, qwen05):
    # As llama.cpp reads these files: EOS, the tokens on its end-of-generation list of texts,
    # and the fill-in-the-middle pad / repo / file separator tokens it finds by text.
    assert smollm2.eog_ids == [0, 2, 4]  # <|endoftext|>, <|im_end|> (= EOS), <reponame>
    assert gemma3.eog_ids == [1, 106, 212]  # <eos>, <end_of_turn>, </s>
    # <|endoftext|>, <|im_end|> (= EOS), <|fim_pad|>, <|repo_name|>, <|file_sep|>, and </s>
    assert qwen05.eog_ids == [128247, 151643, 151645, 151662, 151663, 151664]
    assert gemma3.is_eog(106) and gemma3.is_eog(gemma3.eos_id) and not gemma3.is_eog(2)
    assert smollm2.eos_id == 2 and not smollm2.is_eog(1)


@pytest.mark.model
def test_tokens_llama_cpp_makes_control_by_their_text(gemma3, qwen05):
    """A "</s>" that the file types as user-defined (Gemma 3) or normal (Qwen2.5) is on
    llama.cpp's end-of-generation list, which makes it a control token: read from special text
    only. (The ids are llama-tokenize's, llama.cpp 0c1e570, on these files.)"""
    assert gemma3.encode("</s>", True, False) == [2, 954, 236751, 236813]
    assert gemma3.encode("a</s>b", True, False) == [2, 236746, 954, 236751, 236813, 236763]
    assert gemma3.encode("</s>", True, True) == [2, 212]
    assert qwen05.encode("</s>", False, True) == [128247]
    assert qwen05.encode("a</s>b", False, True) == [64, 128247, 65]
    assert qwen05.encode("</s>", False, False) == [522, 82, 29]
    assert qwen05.decode([64, 128247, 65]) == b"ab"  # a control token prints only when asked
    assert qwen05.decode([64, 128247, 65], special=True) == b"a</s>b"


@pytest.mark.model
def test_utf8_stream_holds_split_characters(smollm2, gemma3):
    # 𓂺 and ꙮ have no Gemma token: they go as byte tokens.
    text = "emoji: 🙂👍🏽🇫🇷 and 東京 — 𓂺ꙮ done"
    for tok in (smollm2, gemma3):
        ids = tok.encode(text, False, False)
        pieces = [tok.token_bytes(i) for i in ids]

        def valid(b):
            try:
                b.decode("utf-8")
                return True
            except UnicodeDecodeError:
                return False

        # The tokenization really does cut characters (else this test would prove nothing).
        assert not all(valid(p) for p in pieces), tok.model
        stream = _core.Utf8Stream()
        out = [stream.push(p) for p in pieces]
        out.append(stream.flush())
        assert "".join(out) == text
        assert "" in out[:-1]  # some bytes were held back
    stream = _core.Utf8Stream()
    assert stream.push(b"a\xf0\x9f") == "a"
    assert stream.push(b"\x99") == ""
    assert stream.push(b"\x82b") == "🙂b"
    assert stream.push(b"\xff") == "\ufffd"  # can never start a character: replaced at once
    assert stream.push(b"\xe6\x9d") == ""
    assert stream.flush() == "\ufffd"  # truncated at the end
    assert stream.push(b"\xe2\x82x") == "\ufffdx"  # broken sequence, then a valid byte


# ------------------------------------------------------------------------------ HF tokenizers


def hf_bpe(path: str, patterns: list, digits: bool, added: list):
    """HF BPE over the GGUF's vocabulary and merges with the given split patterns, byte-level,
    no normalizer; `added` tokens are matched in the text first."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

    v = vocab_of(path)
    vocab = {t: i for i, t in enumerate(v["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    hf = Tokenizer(models.BPE(vocab, merges))
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence(steps)
    if added:
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    return hf


def _special_texts(path: str, types) -> list:
    v = vocab_of(path)
    return [t for t, ty in zip(v["tokens"], v["token_type"]) if ty in types]


def _compare_with_hf(tok, path: str, patterns, digits: bool, n: int, seed: int):
    user = _special_texts(path, {USER_DEFINED})
    control = _special_texts(path, {CONTROL, USER_DEFINED})
    hf_plain = hf_bpe(path, patterns, digits, user)
    hf_special = hf_bpe(path, patterns, digits, control)
    rng = random.Random(seed)
    texts = [random_text(rng, control[:8] + user[:4]) for _ in range(n)]
    # A byte without a token (SmolLM2 lacks 21) is where HF and llama.cpp part: HF removes it
    # before merging, so its neighbours may merge across it; llama.cpp keeps it as a symbol that
    # merges with nothing and drops it at the end (test_unrepresentable_bytes_block_merges).
    chars = _byte_chars()
    missing = {b for b in range(256) if tok.find_token(chars[b]) < 0}
    texts = [t for t in texts if not missing.intersection(t.encode())]
    assert len(texts) > 0.8 * n
    plain = [e.ids for e in hf_plain.encode_batch(texts, add_special_tokens=False)]
    special = [e.ids for e in hf_special.encode_batch(texts, add_special_tokens=False)]
    for text, a, b in zip(texts, plain, special):
        assert tok.encode(text, False, False) == a, repr(text)
        assert tok.encode(text, False, True) == b, repr(text)


@pytest.mark.model
def test_unrepresentable_bytes_block_merges(smollm2):
    # SmolLM2 has no token for byte 0x04. llama.cpp keeps it as a symbol (so " " and "<" around
    # it cannot merge into " <") and then drops it.
    sp, lt = smollm2.find_token("\u0120"), smollm2.find_token("<")
    assert smollm2.find_token("\u0120<") >= 0 and smollm2.find_token("\u0104") < 0
    assert smollm2.encode(" \x04<", False, False) == [sp, lt]
    assert smollm2.encode(" <", False, False) == [smollm2.find_token("\u0120<")]


@pytest.mark.model
def test_smollm2_matches_hf_tokenizers(smollm2, smollm2_path):
    # SmolLM2's tokenizer.json: Digits(individual_digits) then ByteLevel with GPT-2's pattern.
    _compare_with_hf(smollm2, str(smollm2_path), [GPT2_PATTERN], True, 3000, 1)


@pytest.mark.model
def test_qwen2_matches_hf_tokenizers(qwen05, qwen05_path):
    # Qwen2.5's tokenizer.json also has an NFC normalizer, which llama.cpp (the reference) and
    # tova leave out; so does this comparison.
    _compare_with_hf(qwen05, str(qwen05_path), [QWEN2_PATTERN], False, 2000, 2)


@pytest.mark.parametrize("name,digits,patterns", [
    ("gpt2", False, [GPT2_PATTERN]),
    ("smollm", True, [GPT2_PATTERN]),
    ("qwen2", False, [QWEN2_PATTERN]),
    ("llama3", False, [LLAMA3_PATTERN]),
    ("default", False, DEFAULT_PATTERNS),
])
def test_pre_tokenizer_matches_regex(name, digits, patterns):
    from tokenizers import Regex, pre_tokenizers

    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns]
    hf = pre_tokenizers.Sequence(steps)
    rng = random.Random(sum(map(ord, name)))
    texts = [random_text(rng) for _ in range(3000)]
    texts += ["", "a", " ", "  a", "a  ", "\t\tb", " \n \n x", "'S 'Ll 're", "1234567", "x\r\n\r\n"]
    for text in texts:
        want = [piece for piece, _ in hf.pre_tokenize_str(text)]
        assert _core._pre_tokenize(name, text) == want, repr(text)


def test_pre_tokenizer_names():
    assert {"default", "gpt2", "smollm", "qwen2", "llama3", "llama-bpe"} <= set(
        _core.PRE_TOKENIZERS)
    with pytest.raises(ValueError):
        _core._pre_tokenize("no-such-pattern", "x")


# ------------------------------------------------------------------------------ Gemma (SPM)


class SpmReference:
    """llama.cpp's SentencePiece-style tokenization, written for clarity, not speed."""

    def __init__(self, v: dict):
        self.tokens = v["tokens"]
        self.types = [int(t) for t in v["token_type"]]
        self.scores = [float(s) for s in v["scores"]]
        self.bos = v["bos_token_id"]
        self.space_prefix = bool(v.get("add_space_prefix", True))
        self.lookup = {t: i for i, t in enumerate(self.tokens)}
        # Special tokens by first character, each with its rank in llama.cpp's order (longest
        # first; ties by id).
        order = sorted((i for i, ty in enumerate(self.types)
                        if self.tokens[i] and ty in (CONTROL, USER_DEFINED, UNKNOWN)),
                       key=lambda i: (-len(self.tokens[i].encode()), i))
        self.by_first = {}
        for rank, i in enumerate(order):
            self.by_first.setdefault(self.tokens[i][0], []).append((rank, i))

    def specials_in(self, text: str, parse_special: bool) -> list:
        found = set()
        for p, c in enumerate(text):
            for rank, i in self.by_first.get(c, ()):
                if (parse_special or self.types[i] == USER_DEFINED) and \
                        text.startswith(self.tokens[i], p):
                    found.add((rank, i))
        return [i for _, i in sorted(found)]

    def encode(self, text: str, add_bos: bool, parse_special: bool) -> list:
        frags = [(None, text)]
        for i in self.specials_in(text, parse_special):
            t = self.tokens[i]
            out = []
            for tid, raw in frags:
                if tid is not None:
                    out.append((tid, raw))
                    continue
                while (p := raw.find(t)) >= 0:
                    if p:
                        out.append((None, raw[:p]))
                    out.append((i, t))
                    raw = raw[p + len(t):]
                if raw:
                    out.append((None, raw))
            frags = out
        ids = [self.bos] if add_bos else []
        prev_special = True
        for tid, raw in frags:
            if tid is not None:
                ids.append(tid)
                prev_special = True
                continue
            if self.space_prefix and prev_special:
                raw = " " + raw
            prev_special = False
            ids += self.merge(list(raw.replace(" ", SPACE)))
        return ids

    def merge(self, syms: list) -> list:
        lookup, scores = self.lookup, self.scores
        while True:
            best = None  # (score, position): the highest score, leftmost on ties
            for k in range(len(syms) - 1):
                t = lookup.get(syms[k] + syms[k + 1])
                if t is not None and (best is None or scores[t] > best[0]):
                    best = (scores[t], k)
            if best is None:
                break
            k = best[1]
            syms[k:k + 2] = [syms[k] + syms[k + 1]]
        ids = []
        for s in syms:
            if s in lookup:
                ids.append(lookup[s])
            else:
                ids.extend(lookup[f"<0x{b:02X}>"] for b in s.encode())
        return ids


@pytest.mark.model
def test_gemma3_matches_reference_algorithm(gemma3, gemma3_path):
    ref = SpmReference(vocab_of(str(gemma3_path)))
    assert ref.space_prefix is False
    specials = ["<start_of_turn>", "<end_of_turn>", "<bos>", "\n\n", "   ", "\t\t", "<b>",
                "</td>", "<unused7>", "[multimodal]"]
    rng = random.Random(3)
    for _ in range(1000):
        text = random_text(rng, specials)
        for parse_special in (False, True):
            assert gemma3.encode(text, True, parse_special) == ref.encode(
                text, True, parse_special), repr(text)


# ------------------------------------------------------------------------------ synthetic files


def write_tokenizer_gguf(path, *, model="gpt2", pre="gpt2", tokens, types=None, scores=None,
                         merges=None, extra=None):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("tokenizer.ggml.model", model)
    if pre is not None:
        w.add_string("tokenizer.ggml.pre", pre)
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", types or [NORMAL] * len(tokens))
    if scores is not None:
        w.add_array("tokenizer.ggml.scores", [float(s) for s in scores])
    if merges is not None:
        w.add_array("tokenizer.ggml.merges", merges)
    for key, value in (extra or {}).items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        else:
            w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _byte_chars():
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def test_bpe_synthetic_merges_and_ignore_merges(tmp_path):
    chars = _byte_chars()
    base = [chars[b] for b in range(256)]
    G = chars[ord(" ")]
    tokens = base + ["ab", "abc", "xyz", G + "a", "<|end|>"]
    ids = {t: i for i, t in enumerate(tokens)}
    types = [NORMAL] * (len(tokens) - 1) + [CONTROL]
    merges = ["a b", "ab c", G + " a"]  # no merge leads to "xyz"
    for pre, want_xyz in (("gpt2", [ids["x"], ids["y"], ids["z"]]), ("llama3", [ids["xyz"]])):
        path = write_tokenizer_gguf(tmp_path / f"{pre}.gguf", pre=pre, tokens=tokens, types=types,
                                    merges=merges,
                                    extra={"tokenizer.ggml.eos_token_id": ids["<|end|>"]})
        tok = _core.Tokenizer(path)  # (no add_bos_token key: Llama 3's BPE adds BOS, as llama.cpp's)
        assert tok.model == "gpt2" and tok.add_bos is (pre == "llama3")
        assert tok.encode("xyz", False, False) == want_xyz
        # " ab": "a b" (rank 0) goes before "Ġ a" (rank 2), and "Ġ ab" is no merge.
        assert tok.encode("abc ab", False, False) == [ids["abc"], ids[G], ids["ab"]]
        assert tok.encode(" abc", False, False) == [ids[G], ids["abc"]]
        assert tok.encode("a<|end|>", False, True) == [ids["a"], ids["<|end|>"]]
        assert tok.eog_ids == [ids["<|end|>"]]
        assert tok.decode(tok.encode("\x00\xff é", False, False)) == "\x00\xff é".encode()


def test_spm_synthetic_space_prefix_and_byte_fallback(tmp_path):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [
        SPACE, "h", "i", SPACE + "h", SPACE + "hi", "hi"]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * 6
    scores = [0.0] * 259 + [-1.0, -2.0, -2.0, -3.0, -1.5, -0.5]
    ids = {t: i for i, t in enumerate(tokens)}
    path = write_tokenizer_gguf(tmp_path / "spm.gguf", model="llama", pre=None, tokens=tokens,
                                types=types, scores=scores,
                                extra={"tokenizer.ggml.bos_token_id": 1,
                                       "tokenizer.ggml.eos_token_id": 2,
                                       "tokenizer.ggml.unknown_token_id": 0})
    tok = _core.Tokenizer(path)
    # Defaults when the keys are absent, as llama.cpp: BOS and a leading space are added.
    assert tok.add_bos is True and tok.bos_id == 1
    # "▁hi": the best pair first is "hi" (-0.5), then "▁"+"hi" = "▁hi" (-1.5).
    assert tok.encode("hi", True, False) == [1, ids[SPACE + "hi"]]
    # After a special token the text gets the leading space again.
    assert tok.encode("hi</s>hi", False, True) == [ids[SPACE + "hi"], 2, ids[SPACE + "hi"]]
    # No token for "é": its two bytes.
    assert tok.encode("é", False, False) == [ids[SPACE], ids["<0xC3>"], ids["<0xA9>"]]
    assert tok.decode(tok.encode("hi é", False, False)) == b" hi \xc3\xa9"
    assert tok.token_bytes(ids["<0xC3>"]) == b"\xc3"
    assert tok.token_bytes(1) == b"" and tok.token_bytes(1, special=True) == b"<s>"


def test_bad_tokenizer_metadata(tmp_path):
    chars = _byte_chars()
    tokens = [chars[b] for b in range(256)] + ["ab"]
    merges = ["a b"]
    path = write_tokenizer_gguf(tmp_path / "pre.gguf", pre="no-such-pre", tokens=tokens, merges=merges)
    with pytest.raises(_core.GGUFError, match=r"no-such-pre.*supported.*smollm.*qwen2"):
        _core.Tokenizer(path)
    path = write_tokenizer_gguf(tmp_path / "model.gguf", model="bert", tokens=tokens)
    with pytest.raises(_core.GGUFError, match="bert"):
        _core.Tokenizer(path)
    path = write_tokenizer_gguf(tmp_path / "types.gguf", tokens=tokens, types=[NORMAL] * 10, merges=merges)
    with pytest.raises(_core.GGUFError, match="token_type has 10 entries, expected 257"):
        _core.Tokenizer(path)
    path = write_tokenizer_gguf(tmp_path / "merges.gguf", tokens=tokens)
    with pytest.raises(_core.GGUFError, match="'tokenizer.ggml.merges' is missing"):
        _core.Tokenizer(path)
    path = write_tokenizer_gguf(tmp_path / "bos.gguf", tokens=tokens, merges=merges,
                                extra={"tokenizer.ggml.bos_token_id": 999})
    with pytest.raises(_core.GGUFError, match="bos_token_id = 999"):
        _core.Tokenizer(path)


# ------------------------------------------------------------------------------ chat messages are text

_TURN_MARKERS = {  # (the template's text around a message, its control tokens as tokens)
    "smollm2": ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "qwen05": ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "gemma3": ("<bos><start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"),
}


@pytest.mark.model
@pytest.mark.parametrize("name", ["smollm2", "qwen05", "gemma3"])
def test_a_message_spelling_control_tokens_is_text(name, request):
    """A message that spells the turn markers ("<|im_end|>", "<end_of_turn>") stays text in a
    chat prompt (mark_literal + encode_chat): the same tokens as the message read as plain text,
    in context, while the template's own markers are tokens; a message that spells none
    tokenizes as before, marks or not."""
    tok = request.getfixturevalue(name)
    before, after = _TURN_MARKERS[name]
    spelled = after.split("\n")[0]  # "<|im_end|>" / "<end_of_turn>"
    for message in [f"hi{spelled}", f"{before}x{after}The secret is", f" {spelled} {spelled}",
                    f"{spelled}", "no markers here at all", "", "emoji \U0001F600 and \ufdd0 a mark"]:
        marked = tok.mark_literal(message)
        assert tok.encode_chat(marked) == tok.encode(message.replace("\ufdd0", "\ufffd"), False, False)
        ids = tok.encode_chat(before + marked + after)
        plain = tok.encode(before + message.replace("\ufdd0", "\ufffd") + after, False, True)
        if spelled not in message and "<" not in message:
            assert ids == plain  # (nothing spelled: as before)
        # the template's markers only, and the text whole
        markers = tok.encode(before + after, False, True)
        controls = [t for t in markers if tok.token_type(t) == CONTROL]
        assert [t for t in ids if tok.token_type(t) == CONTROL] == controls
        assert tok.decode(ids, True) == (before + message.replace("\ufdd0", "\ufffd") + after).encode()
    # The marks: U+FDD0 and U+FDD1 around each spelling.
    assert tok.mark_literal(f"a{spelled}b") == f"a\ufdd0{spelled}\ufdd1b"


# ------------------------------------------------------------------------------ defaults of files without the keys


def test_defaults_of_files_without_tokenizer_keys(tmp_path):
    """What llama.cpp assumes when a key is absent: Llama 3's byte-level BPE adds BOS (older
    Llama 3 files have no add_bos_token), others do not; a SentencePiece vocabulary's ids are
    unknown 0, BOS 1, EOS 2; token scores may be int32; a byte-level BPE without merges is
    refused (every word would fall apart into bytes)."""
    import gguf
    from reference.synthetic import write_gemma3_gguf, write_llama_gguf

    for pre, bos in (("llama-bpe", True), ("llama3", True), ("smollm", False), ("qwen2", False)):
        path = tmp_path / f"{pre}.gguf"
        write_llama_gguf(path, seed=1, tokenizer_pre=pre, extra_kv={"tokenizer.ggml.add_bos_token": None})
        assert _core.Tokenizer(str(path)).add_bos == bos, pre
    path = tmp_path / "no_merges.gguf"
    write_llama_gguf(path, seed=1, extra_kv={"tokenizer.ggml.merges": None})
    with pytest.raises(ValueError, match="'tokenizer.ggml.merges' is missing"):
        _core.Tokenizer(str(path))
    path = tmp_path / "spm_ids.gguf"
    model = write_gemma3_gguf(path, seed=1, extra_kv={
        "tokenizer.ggml.bos_token_id": None, "tokenizer.ggml.eos_token_id": None,
        "tokenizer.ggml.unknown_token_id": None,
        "tokenizer.ggml.scores": ([int(-i) for i in range(512)], gguf.GGUFValueType.ARRAY)})
    tok = _core.Tokenizer(str(path))  # (the integer scores read: before, a refusal)
    assert (tok.bos_id, tok.encode("hello", True, False)[0]) == (1, 1) and len(model.tokens) == tok.n_vocab
