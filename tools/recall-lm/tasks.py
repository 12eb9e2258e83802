"""Vocabulary, tokenizer and the seeded retrieval tasks of recall-lm (see README.md).

Every text is a sequence of " word" pieces (a space plus letters or one punctuation mark),
each one token of the word-level BPE built here, and of numbers written as " " followed by
single-digit tokens. A task instance is (context, question, answer) text; the model input is
[BOS] + encode(context + question) and the answer follows.

Tasks (RULER-style; keys are invented words, values are 5-digit numbers):
  niah     one needle   " the special magic number for KEY is 48193 ."; question
           " what is the special magic number for KEY ? the special magic number for KEY is"
           (the question, then the start of the answer sentence, as RULER's answer prefix);
           answer " 48193"
  mk-niah  several needles with different keys; one of them is asked
  mq-niah  several needles; two are asked: " what are the special magic numbers for K1 and
           K2 ? the special magic number for K1 is"; answer " V1"; then (given, after the
           "." that ends it) " the special magic number for K2 is"; answer " V2" (mq_style
           "given"; in training mq_style "answer" makes the second sentence answer too)
  vt       variable tracking: " var A = 48193 ." then " var B = var A ." ... (a chain of
           `hops` copies) plus distractor chains with other values; question " what is var Z ?
           var Z is" for the chain's last variable; answer its value (vt_style "direct"; see
           instance() for the chain-walking styles "var" and "chained")
Filler: sentences of a small random grammar (nouns, verbs, adjectives, small numbers), so
the needles are rare events in varied text.
"""
import json

import numpy as np

CONS = "bdfgklmnprstvz"
VOWELS = "aeiou"

FILLER_NOUNS = ("man woman child dog cat bird fox horse farmer king queen sailor teacher doctor river "
                "mountain forest city village house garden road bridge ship boat tree stone book letter "
                "song story window door table chair lamp cloud rain wind sun moon star field market "
                "castle tower island lake valley hill apple bread cheese coin ring sword shield").split()
FILLER_ADJ = ("old young small big tall short red green blue white black quiet loud happy sad "
              "bright dark cold warm wet dry slow quick brave strange gentle heavy light").split()
FILLER_VERBS = ("saw found took left met built carried painted followed watched helped crossed "
                "visited opened closed sold bought kept lost heard").split()
FILLER_INTRANS = "slept walked waited sang laughed smiled rested worked danced wandered".split()
FILLER_PREP = "near under over behind beside across through into toward".split()
FILLER_TIME = "morning evening night day winter summer spring autumn".split()
FILLER_MISC = ("the a and then while after before every one in on at of with there was were "
               "many few some two three").split()
TEMPLATE = ("special magic number numbers for is what are var").split()
PUNCT = [".", "?", "=", ","]


def invented_words():
    """Every 5th consonant-vowel-consonant-vowel word (980 words); keys and variable names."""
    return [a + b + c + d for a in CONS for b in VOWELS for c in CONS for d in VOWELS][::5]


def word_list():
    seen, out = set(), []
    for w in (FILLER_NOUNS + FILLER_ADJ + FILLER_VERBS + FILLER_INTRANS + FILLER_PREP + FILLER_TIME
              + FILLER_MISC + TEMPLATE + PUNCT + invented_words()):
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def build_tokenizer_json():
    """A "lukv-bpe-1" tokenizer whose merges make every " word" of word_list() one token.

    Merges join a word's bytes left to right (" " + "b" -> " b", " b" + "a" -> " ba", ...), so
    the prefixes are shared; ids 0..255 are the bytes, then the merges, then BOS and EOS.
    """
    merges, piece_id = [], {}
    for w in word_list():
        cur = 32  # the space
        piece = b" "
        for ch in w.encode():
            nxt = piece + bytes([ch])
            if nxt not in piece_id:
                merges.append([cur, ch])
                piece_id[nxt] = 256 + len(merges) - 1
            cur = piece_id[nxt]
            piece = nxt
    vocab = [bytes([i]).hex() for i in range(256)]
    rev = {v: k for k, v in piece_id.items()}
    for r in range(len(merges)):
        vocab.append(rev[256 + r].hex())
    n = 256 + len(merges)
    return {
        "format": "lukv-bpe-1",
        "vocab_size": n + 2,
        "pre_split": "byte-classes-v1",
        "special_tokens": {"<|bos|>": n, "<|eos|>": n + 1},
        "merges": merges,
        "vocab": vocab,
        "training": {"kind": "word-level: one merge chain per word of tools/recall-lm/tasks.py word_list()",
                     "words": len(word_list())},
    }


class Vocab:
    """Direct word -> id mapping (equal to the BPE encoding of " word"; checked by export.py)."""

    def __init__(self, tok_json):
        self.size = tok_json["vocab_size"]
        self.bos = tok_json["special_tokens"]["<|bos|>"]
        self.eos = tok_json["special_tokens"]["<|eos|>"]
        pieces = {bytes.fromhex(h): i for i, h in enumerate(tok_json["vocab"])}
        self.id = {w: pieces[b" " + w.encode()] for w in word_list()}
        self.space = 32
        self.digit = [48 + d for d in range(10)]

    def words(self, ws):
        return [self.id[w] for w in ws]

    def number(self, s):
        return [self.space] + [self.digit[int(c)] for c in s]


class Piece:
    """Token ids and text of a span, built together."""

    def __init__(self):
        self.ids, self.parts = [], []

    def words(self, v, ws):
        self.ids += v.words(ws)
        self.parts.append("".join(" " + w for w in ws))
        return self

    def number(self, v, s):
        self.ids += v.number(s)
        self.parts.append(" " + s)
        return self

    def extend(self, other):
        self.ids += other.ids
        self.parts += other.parts
        return self

    @property
    def text(self):
        return "".join(self.parts)


def filler_sentence(rng):
    c = lambda xs: xs[rng.integers(len(xs))]
    k = rng.integers(6)
    if k == 0:
        ws = ["the", c(FILLER_ADJ), c(FILLER_NOUNS), c(FILLER_VERBS), "the", c(FILLER_NOUNS), c(FILLER_PREP), "the", c(FILLER_NOUNS)]
    elif k == 1:
        ws = ["in", "the", c(FILLER_TIME), "the", c(FILLER_NOUNS), c(FILLER_INTRANS), c(FILLER_PREP), "the", c(FILLER_ADJ), c(FILLER_NOUNS)]
    elif k == 2:
        ws = ["there", "were", c(["two", "three", "many", "few", "some"]), c(FILLER_ADJ), c(FILLER_NOUNS), c(["in", "near", "behind"]), "the", c(FILLER_NOUNS)]
    elif k == 3:
        ws = ["a", c(FILLER_NOUNS), "and", "a", c(FILLER_NOUNS), c(FILLER_INTRANS), "while", "the", c(FILLER_NOUNS), c(FILLER_INTRANS)]
    elif k == 4:
        ws = ["the", c(FILLER_NOUNS), "was", c(FILLER_ADJ), "and", c(FILLER_ADJ), "after", "the", c(FILLER_TIME)]
    else:
        return ["the", c(FILLER_NOUNS), c(FILLER_VERBS)], str(int(rng.integers(2, 100))), [c(FILLER_ADJ), c(FILLER_NOUNS), "."]
    return ws + ["."], None, None


def filler(v, rng, n_tokens):
    """Whole filler sentences of about n_tokens tokens (at most n_tokens)."""
    p = Piece()
    while True:
        a, num, b = filler_sentence(rng)
        q = Piece().words(v, a)
        if num is not None:
            q.number(v, num).words(v, b)
        if len(p.ids) + len(q.ids) > n_tokens:
            return p
        p.extend(q)


def value(rng):
    return str(int(rng.integers(10000, 100000)))


def distinct_words(rng, n, pool):
    idx = rng.choice(len(pool), size=n, replace=False)
    return [pool[i] for i in idx]


INVENTED = invented_words()
# Keys and variable names come from disjoint halves of the invented words.
KEY_POOL = INVENTED[0::2]
VAR_POOL = INVENTED[1::2]


def instance(v, task, rng, length, n_needles=None, hops=None, all_questions=False, vt_style="direct", mq_style="answer"):
    """One instance whose [BOS] + context + question + answer is at most `length` tokens.

    vt_style: how a vt statement names the variable it copies and how the answer walks the
    chain: "chained" (" var B = A ."; question " ... var B ="; answer " A = 48193"), "var"
    (" var B = var A ."; answer " var A . var A = 48193") or "direct" (" var B = var A .";
    question " what is var B ? var B is"; answer " 48193", the value only: the r3 checkpoint's;
    the shipped model was trained on "chained").
    mq_style: "given" (the second key's sentence " the special magic number for K2 is" is a
    prompt, given to the model: the evaluation's format) or "answer" (it is part of the
    answer, so the model must produce K2: the r3 checkpoint's training; the shipped model was
    trained on "given").
    The token sequence is the same in both mq styles; only what counts as answer differs.

    Returns dict(context=Piece, qas=[[(prompt Piece, answer Piece), ...]]): a question is a list
    of parts, each a prompt the model is given and the answer it must produce (mq-niah: two
    parts; the input is prompt, answer, ".", next prompt, answer, "."). The first question is the
    evaluation question; with all_questions=True further ones (for training) follow.
    """
    statements = []  # list of (group, Piece); pieces of one group keep their order
    qas = []
    if task in ("niah", "mk-niah", "mq-niah"):
        n = 1 if task == "niah" else (n_needles or int(rng.integers(2, 7)))
        keys = distinct_words(rng, n, KEY_POOL)
        vals = [value(rng) for _ in keys]
        for i, (k, val) in enumerate(zip(keys, vals)):
            statements.append((i, Piece().words(v, ["the", "special", "magic", "number", "for", k, "is"]).number(v, val).words(v, ["."])))
        order = list(rng.permutation(n))
        said = lambda k: ["the", "special", "magic", "number", "for", k, "is"]
        if task == "mq-niah" and n >= 2:
            pairs = [order[i:i + 2] for i in range(0, n - 1, 2)]
            for a, b in pairs:
                q = Piece().words(v, ["what", "are", "the", "special", "magic", "numbers", "for", keys[a], "and", keys[b], "?"] + said(keys[a]))
                if mq_style == "given":
                    # the second answer's sentence is started for the model (after the "." that
                    # ends the first), as the first one's is by the question
                    qas.append([(q, Piece().number(v, vals[a])), (Piece().words(v, said(keys[b])), Piece().number(v, vals[b]))])
                else:
                    qas.append([(q, Piece().number(v, vals[a]).words(v, ["."] + said(keys[b])).number(v, vals[b]))])
        else:
            for i in order:
                q = Piece().words(v, ["what", "is", "the", "special", "magic", "number", "for", keys[i], "?"] + said(keys[i]))
                qas.append([(q, Piece().number(v, vals[i]))])
    elif task == "vt":
        h = hops or int(rng.integers(1, 3))
        n_chains = n_needles or int(rng.integers(2, 4))
        names = distinct_words(rng, n_chains * (h + 1), VAR_POOL)
        vals = [value(rng) for _ in range(n_chains)]
        finals = []
        ref = (lambda name: [name]) if vt_style == "chained" else (lambda name: ["var", name])
        for c in range(n_chains):
            chain = names[c * (h + 1):(c + 1) * (h + 1)]
            statements.append((c, Piece().words(v, ["var", chain[0], "="]).number(v, vals[c]).words(v, ["."])))
            for j in range(1, h + 1):
                statements.append((c, Piece().words(v, ["var", chain[j], "="] + ref(chain[j - 1]) + ["."])))
            finals.append((chain, vals[c]))

        def walk(chain, j, val):
            """The question about chain[j] and its answer: the chain from chain[j] down to the
            value, each variable found by the one before it ("chained": " B = A = 48193" after
            "var C ="; "var": " var B . var B = var A . var A = 48193")."""
            if vt_style == "direct":
                return [(Piece().words(v, ["what", "is", "var", chain[j], "?", "var", chain[j], "is"]), Piece().number(v, val))]
            q = Piece().words(v, ["what", "is", "var", chain[j], "?", "var", chain[j], "="])
            a = Piece()
            for i in range(j - 1, -1, -1):
                a.words(v, [chain[i], "="] if vt_style == "chained" else ["var", chain[i], ".", "var", chain[i], "="])
            return [(q, a.number(v, val))]
        for c in rng.permutation(n_chains):
            chain, val = finals[c]
            qas.append(walk(chain, h, val))
            if all_questions:
                for j in range(h):
                    qas.append(walk(chain, j, val))
    else:
        raise ValueError(task)
    if not all_questions:
        qas = qas[:1]
    qa_len = sum(len(q.ids) + len(a.ids) + 1 for group in qas for q, a in group)  # + "." after each answer
    body = length - 1 - qa_len
    need = sum(len(p.ids) for _, p in statements)
    fill = filler(v, rng, body - need)
    # split the filler at sentence ends ('.' tokens) and insert the statements at random depths
    dot = v.id["."]
    sent_ids, sent_txt = split_sentences(fill, dot)
    # each statement goes before a random filler sentence; a group's statements keep their
    # order (a random interleaving of the groups over the sorted insertion points)
    cuts = sorted(int(c) for c in rng.integers(0, len(sent_ids) + 1, size=len(statements)))
    by_group = {}
    for g, p in statements:
        by_group.setdefault(g, []).append(p)
    labels = [g for g, _ in statements]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    taken = {g: 0 for g in by_group}
    seq = []
    for g in labels:
        seq.append(by_group[g][taken[g]])
        taken[g] += 1
    ctx = Piece()
    k = 0
    for s in range(len(sent_ids) + 1):
        while k < len(seq) and cuts[k] == s:
            ctx.extend(seq[k])
            k += 1
        if s < len(sent_ids):
            ctx.ids += sent_ids[s]
            ctx.parts.append(sent_txt[s])
    return {"context": ctx, "qas": qas}


def split_sentences(fill, dot):
    """The filler's sentences as (ids, text) lists (each ends with ' .')."""
    ids_out, txt_out = [], []
    cur_ids = []
    for t in fill.ids:
        cur_ids.append(t)
        if t == dot:
            ids_out.append(cur_ids)
            cur_ids = []
    txt = fill.text
    pieces = txt.split(" .")
    txt_out = [p + " ." for p in pieces[:-1]]
    assert len(txt_out) == len(ids_out) and pieces[-1] == ""
    return ids_out, txt_out


def sequence(v, inst, decision_weight=1.0):
    """Token ids [BOS] + context + (prompt + answer + ".")* over the parts of every question, and
    the answer-token mask.

    decision_weight: the mask value (the loss weight) of the answer tokens where the answer is
    decided, the rest being copies: the first digit of every value, in vt a variable name that
    follows "=" or "= var" (the name a chain statement gives), in mq-niah (mq_style "answer")
    the second key; the other answer tokens have 1."""
    ids = [v.bos] + inst["context"].ids
    mask = [0] * len(ids)
    if decision_weight != 1.0:
        digits, names = set(v.digit), set(v.words(VAR_POOL))
    for group in inst["qas"]:
        for q, a in group:
            ids += q.ids
            mask += [0] * len(q.ids)
            for t in a.ids:
                w = 1.0
                if decision_weight != 1.0:
                    first_digit = t in digits and ids[-1] not in digits
                    named = t in names and (ids[-1] == v.id["="] or (ids[-1] == v.id["var"] and ids[-2] == v.id["="]))
                    second_key = ids[-1] == v.id["for"]  # mq-niah's K2, in mq_style "answer"
                    if first_digit or named or second_key:
                        w = decision_weight
                ids.append(t)
                mask.append(w)
            ids.append(v.id["."])
            mask.append(0)
    return ids, mask


TASKS = ("niah", "mk-niah", "mq-niah", "vt")
# Settings of the evaluation instances (held out, and the training-time checks).
EVAL_SETTINGS = {"niah": {}, "mk-niah": {"n_needles": 4}, "mq-niah": {"n_needles": 4}, "vt": {"n_needles": 2, "hops": 1}}


def copy_sequence(v, rng, T):
    """[BOS] filler P filler P with P a span of 8-40 random tokens (words, numbers); the second
    copy is the answer: only copying (an induction head) predicts it."""
    pool = INVENTED + FILLER_NOUNS + FILLER_ADJ
    n = int(rng.integers(8, 41))
    p = Piece()
    for _ in range(n):
        if rng.random() < 0.3:
            p.number(v, str(int(rng.integers(0, 10))))
        else:
            p.words(v, [pool[rng.integers(len(pool))]])
    gap = max(0, T - 1 - 2 * len(p.ids))
    a = int(rng.integers(0, gap + 1)) if gap > 0 else 0
    f1 = filler(v, rng, a)
    f2 = filler(v, rng, max(0, gap - len(f1.ids)))
    ids = [v.bos] + f1.ids + p.ids + f2.ids + p.ids
    mask = [0] * (1 + len(f1.ids) + len(p.ids) + len(f2.ids)) + [1] * len(p.ids)
    return ids, mask


def make_batch(v, rng, B, T, copy_share=0.0, kv_share=0.0, kv_number_share=0.0, task_weights=None, decision_weight=1.0,
               vt_style="direct", mq_style="answer"):
    """B training sequences of at most T+1 tokens (EOS-padded), their answer masks and task
    names: a task of TASKS with all its questions, with probability kv_share an associative
    recall sequence (kv_sequence; a share kv_number_share of them with multi-digit values),
    with probability copy_share a copy sequence. task_weights (one per task of TASKS) makes
    the choice of the task non-uniform; None keeps the uniform draw (and the random stream)
    of the earlier runs. decision_weight: see sequence(); vt_style, mq_style: see instance()."""
    if task_weights is not None:
        tw = np.asarray(task_weights, dtype=np.float64)
        tw = tw / tw.sum()
    X = np.full((B, T + 1), v.eos, dtype=np.int64)
    M = np.zeros((B, T + 1), dtype=np.float32)
    kinds = []
    for b in range(B):
        r = rng.random() if (copy_share > 0 or kv_share > 0) else 1.0
        if r < kv_share:
            task = "kv"
            if kv_number_share > 0 and rng.random() < kv_number_share:
                ids, mask = kv_sequence(v, rng, T + 1, numbers=True)
            else:
                ids, mask = kv_sequence(v, rng, T + 1)
        elif r < kv_share + copy_share:
            task = "copy"
            ids, mask = copy_sequence(v, rng, T + 1)
        else:
            task = TASKS[rng.integers(len(TASKS))] if task_weights is None else TASKS[rng.choice(len(TASKS), p=tw)]
            inst = instance(v, task, rng, T + 1, all_questions=True, vt_style=vt_style, mq_style=mq_style)
            ids, mask = sequence(v, inst, decision_weight)
        ids, mask = ids[:T + 1], mask[:T + 1]
        X[b, :len(ids)] = ids
        M[b, :len(mask)] = mask
        kinds.append(task)
    return X, M, kinds


KV_VALUES = FILLER_NOUNS + FILLER_ADJ


def kv_sequence(v, rng, T, numbers=False):
    """Multi-query associative recall (MQAR-like, dense): [BOS] k1 x1 k2 x2 ... kn xn, then
    queries ka xa kb xb ... of keys of the context (random order, with repeats). Keys are
    invented words, values single tokens (filler nouns and adjectives, or digits); the value of
    every query is an answer token, so a short sequence carries many answers. With few pairs,
    copying any value of the context is often right, which gives the lookup a gradient. Only an
    induction-style lookup (find the earlier key, copy the token after it) predicts them.

    numbers=True: every value is a number of 2-5 digits written as in the tasks (" " then one
    token per digit), so a query must copy a whole span after its key (the skill mk-niah and
    mq-niah need when several 5-digit values share digits); all the value tokens are answers."""
    if numbers:
        n = int(rng.integers(2, max(2, (T - 1) // 8) + 1))
        keys = distinct_words(rng, n, KEY_POOL)
        vals = [v.number(str(int(rng.integers(10 ** (d - 1), 10 ** d)))) for d in rng.integers(2, 6, size=n)]
        ids = [v.bos]
        for k, x in zip(keys, vals):
            ids += v.words([k]) + x
        mask = [0] * len(ids)
        while True:
            i = int(rng.integers(n))
            if len(ids) + 1 + len(vals[i]) > T:
                return ids, mask
            ids += v.words([keys[i]]) + vals[i]
            mask += [0] + [0] + [1] * (len(vals[i]) - 1)  # the space after the key is predictable
    n = int(rng.integers(2, max(2, (T - 1) // 4) + 1))  # 2..(T-1)/4 pairs: few pairs are easy (a start)
    n = min(n, len(KEY_POOL))  # past T = 1961 more pairs than distinct keys could be drawn
    keys = distinct_words(rng, n, KEY_POOL)
    vals = []
    for _ in range(n):
        if rng.random() < 0.3:
            vals.append([v.digit[int(rng.integers(10))]])
        else:
            vals.append(v.words([KV_VALUES[rng.integers(len(KV_VALUES))]]))
    ids = [v.bos]
    for k, x in zip(keys, vals):
        ids += v.words([k]) + x
    mask = [0] * len(ids)
    while len(ids) + 2 <= T:
        i = int(rng.integers(n))
        ids += v.words([keys[i]]) + vals[i]
        mask += [0, 1]
    return ids, mask
