"""Builds real tokenizer vocabularies from the Brown corpus, deterministically, for the
comparison of our tokenizers with llama.cpp's (tests/python/test_tokenizers_llama.py):

  spm.gguf            SentencePiece BPE (byte_fallback, one user-defined token "<sep>") trained
                      on data/brown/train.txt, as a vocab-only GGUF with tokenizer.ggml.model
                      "llama" (the real scores and types, as convert from tokenizer.model does)
  spm-hf.gguf         the same vocabulary the way llama.cpp's LlamaHfVocab converts its
                      tokenizer.json (every score -1000, special tokens control)
  spm.tokenizer.json  that tokenizer.json (Prepend + Replace normalizer, byte_fallback BPE)
  spm-metaspace.tokenizer.json  the same with a Metaspace pre-tokenizer instead
  bpe-PRE.gguf        a GPT-2 byte-level BPE trained here (3000 merges, user-defined "<sep>",
                      control "<|endoftext|>"), tokenizer.ggml.model "gpt2", once per
                      pre-tokenizer name
  bpe.tokenizer.json  the same as a Hugging Face tokenizer.json (ByteLevel pre-tokenizer)
  bpe-llama3.tokenizer.json  with the Llama 3 Split regex (the pre is inferred from it)

Both are trained on the first MiB of train.txt plus copies of the (valid part of the) stress
text below, so that merges cover its characters and whitespace runs.

Usage: make_test_vocabs.py OUT_DIR  (needs sentencepiece and gguf-py on sys.path).
"""

import collections
import json
import os
import re
import sys

BPE_PRES = ["gpt-2", "llama-bpe", "llama3", "qwen2", "olmo", "deepseek-llm", "default"]
SPM_VOCAB = 3000
BPE_MERGES = 3000
TRAIN_BYTES = 1 << 20  # the first 1 MiB of train.txt keeps training to a few seconds

LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


# Invalid UTF-8: lone continuation, truncated 2/3/4-byte sequences, overlong '/' and NUL, a
# surrogate, 0xFF/0xFE, a lead byte at the very end.
INVALID = (b"a\x80b \xc3 x \xe2\x82 y \xf0\x9f\x98 z \xc0\xaf \xc0\x80 \xe0\x80\xaf "
           b"\xed\xa0\x80 \xff\xfe q\xc3")


def stress_text():
    parts = [
        "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m, e\u0301 a\u0308 n\u0303o",
        "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3002\u4e2d\u6587\uff0c\ud55c\uad6d\uc5b4 \u3000\u5168\u89d2",
        "\U0001F642 \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F44D\U0001F3FD \u2764\ufe0f",
        "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0939\u093f\u0928\u094d\u0926\u0940 \u0e44\u0e17\u0e22",
        " ".join("1234567890" * 2 for _ in range(1))
        + " " + " ".join("9" * k for k in range(1, 21)),
        "tabs\t\tand  spaces   \n\n\r\n \u00a0nbsp\u00a0 \u2003em\u2028line\u0085nel  \n",
        "it's I'LL we've THEY'RE she'd 'S 'll ''s don't",
        "<sep>user<sep> <sep>  \u2581literal \u2581\u2581x",
        "$100 + 20% = <ok>? {a|b} ~x^2 `q` @home #tag \u00bf\u00a1 \u2014 \u2026 \u00ab\u00bb",
        "\u00b5 \u00c0\u00d7\u00f7 \u0391\u03b2\u03b3 \u0416\u0436 \uff21\uff42\uff10\uff11 \u2160\u2161 \u00bd",
        # U+0085 is White_Space, U+180E is not (PCRE2's \s matches both); U+3000 sits inside
        # deepseek-llm's CJK class; NBSP, em space, line/paragraph separators around words.
        "a.\u0085.b  \u0085  x\u0085\u0085 y\t\u0085\n z \u0085",
        "a.\u180e.b  \u180e  x\u180e\u180e y\t\u180e\n z \u180e",
        "\u3000\u3001\u3002 \u4e00\u3000\u4e8c \u00a0\u00a0word \u2028\u2029 q\u2003\u2003",
        "   trailing   ",
    ]
    return "\n".join(parts).encode("utf-8") + b"\n" + INVALID + b"\n end \n"


def bytes_to_unicode():
    """GPT-2's byte -> printable character table."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def train_text(root):
    with open(os.path.join(root, "data", "brown", "train.txt"), "rb") as f:
        data = f.read(TRAIN_BYTES)
    return data.decode("utf-8", errors="ignore")


def gguf_writer(gguf, path):
    # llama.cpp's vocab_only load still reads the architecture's required hyper-parameters.
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    return w


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_spm(root, out, gguf):
    import sentencepiece as spm

    stress = stress_text().replace(INVALID, b"").decode("utf-8")
    lines = [l for l in (train_text(root) + stress * 20).split("\n") if l.strip()]
    prefix = os.path.join(out, "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=prefix, model_type="bpe",
        vocab_size=SPM_VOCAB, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=0.9995, user_defined_symbols=["<sep>"], input_sentence_size=0,
        shuffle_input_sentence=False, num_threads=1, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        elif tokens[-1] == "<sep>":
            types.append(4)
        else:
            types.append(1)

    def write(path, scores, types):
        w = gguf_writer(gguf, path)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)
        finish(w)

    write(os.path.join(out, "spm.gguf"), scores, types)
    # LlamaHfVocab: score -1000, <0xXX> byte, the special (control/unknown) ids control, the rest
    # of model.vocab normal (also "<sep>", which sits inside the base vocabulary).
    hf_types = [6 if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t) else 3 if i in (0, 1, 2) else 1
                for i, t in enumerate(tokens)]
    write(os.path.join(out, "spm-hf.gguf"), [-1000.0] * len(tokens), hf_types)
    tj = {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": tokens[i], "special": True} for i in (0, 1, 2)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "decoder": {"type": "Sequence", "decoders": []},
        "model": {"type": "BPE", "byte_fallback": True, "unk_token": "<unk>",
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
    }
    with open(os.path.join(out, "spm.tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    # The newer layout: no normalizer, a Metaspace pre-tokenizer that prepends on the first piece.
    tj["normalizer"] = None
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                           "prepend_scheme": "first", "split": False}
    with open(os.path.join(out, "spm-metaspace.tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)


def train_bpe(text):
    """Plain byte-level BPE: words from a GPT-2-like split, most frequent pair first (ties: the
    smallest pair), incremental pair counts."""
    b2u = bytes_to_unicode()
    words = collections.Counter(re.findall(r" ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+", text))
    seqs = [[b2u[b] for b in w.encode("utf-8")] for w in words]
    freq = list(words.values())
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for i, s in enumerate(seqs):
        for a, b in zip(s, s[1:]):
            pairs[(a, b)] += freq[i]
            where[(a, b)].add(i)
    merges = []
    for _ in range(BPE_MERGES):
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if pairs[best] <= 0:
            break
        merges.append(best)
        joined = best[0] + best[1]
        for i in list(where[best]):
            s = seqs[i]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] -= freq[i]
                if pairs[(a, b)] <= 0:
                    del pairs[(a, b)]
            out, k = [], 0
            while k < len(s):
                if k + 1 < len(s) and s[k] == best[0] and s[k + 1] == best[1]:
                    out.append(joined)
                    k += 2
                else:
                    out.append(s[k])
                    k += 1
            seqs[i] = out
            for a, b in zip(out, out[1:]):
                pairs[(a, b)] += freq[i]
                where[(a, b)].add(i)
        where.pop(best, None)
    tokens = [b2u[b] for b in range(256)]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens.append("<sep>")  # user-defined: cut out of the text before pre-tokenization
    tokens.append("<|endoftext|>")
    return tokens, [f"{a} {b}" for a, b in merges]


def make_bpe(root, out, gguf):
    # The stress text (valid part) is part of the training data, repeated, so that merges cross
    # its unusual characters and the pre-tokenizer's word boundaries show in the ids.
    stress = stress_text().replace(INVALID, b"").decode("utf-8")
    tokens, merges = train_bpe(train_text(root) + stress * 200)
    types = [1] * (len(tokens) - 2) + [4, 3]
    eot, sep = len(tokens) - 1, len(tokens) - 2
    for pre in BPE_PRES:
        w = gguf_writer(gguf, os.path.join(out, f"bpe-{pre}.gguf"))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(eot)
        w.add_eos_token_id(eot)
        finish(w)
    for name, pre_tok in [
        ("bpe", {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": True}),
        ("bpe-llama3", {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]}),
    ]:
        tj = {
            "version": "1.0",
            "added_tokens": [{"id": sep, "content": tokens[sep], "special": False},
                             {"id": eot, "content": tokens[eot], "special": True}],
            "normalizer": None,
            "pre_tokenizer": pre_tok,
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "byte_fallback": False,
                      "vocab": {t: i for i, t in enumerate(tokens[:sep])},
                      "merges": merges},
        }
        with open(os.path.join(out, f"{name}.tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tj, f, ensure_ascii=False)


def main(out):
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    import gguf
    os.makedirs(out, exist_ok=True)
    make_spm(root, out, gguf)
    make_bpe(root, out, gguf)


def cached(build_dir):
    """The vocabularies under build_dir/test_vocabs/<hash of this file>, built once. Tests running
    in parallel may both build them; each builds in its own temporary directory and the first
    rename wins."""
    import hashlib
    import shutil
    with open(__file__, "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()[:12]
    final = os.path.join(build_dir, "test_vocabs", key)
    if os.path.exists(os.path.join(final, "done")):
        return final
    tmp = f"{final}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    main(tmp)
    open(os.path.join(tmp, "done"), "w").close()
    try:
        os.rename(tmp, final)
    except OSError:  # another test finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":
    main(sys.argv[1])
