"""Byte-level BPE used by lukv's tiny LM: pre-split rule, encoder, decoder, loader.

The format and algorithm are specified in tools/tiny-lm/README.md ("Tokenizer");
this file is the reference implementation.

Byte classes:  L = A-Z a-z and every byte >= 0x80;  D = 0-9;
               W = 0x09 0x0A 0x0B 0x0C 0x0D 0x20;    P = every other byte.
Pre-split (scanning the UTF-8 bytes left to right, at position i):
  1. b[i] == 0x20 and b[i+1] is L or P  -> the space plus the maximal run of
     bytes of b[i+1]'s class.
  2. b[i] is D                          -> that single digit.
  3. b[i] is L or P                     -> the maximal run of that class.
  4. b[i] is W                          -> the maximal run of W bytes, minus its last
     byte when the run has >= 2 bytes, ends with 0x20 and is followed by an L or P
     byte (that space then starts the next pre-token by rule 1).
Merges: token ids 0..255 are the single bytes; merge number r (0-based, the rank)
joins ids (a, b) into id 256 + r. Encoding one pre-token: start from its bytes;
repeatedly take the adjacent pair with the lowest rank among pairs that are merges;
replace all its occurrences, scanning left to right without overlap; stop when no
adjacent pair is a merge. Special tokens are never produced from text.
"""
import json

L, D, W, P = 0, 1, 2, 3
_CLS = []
for _b in range(256):
    if (65 <= _b <= 90) or (97 <= _b <= 122) or _b >= 128:
        _CLS.append(L)
    elif 48 <= _b <= 57:
        _CLS.append(D)
    elif _b in (9, 10, 11, 12, 13, 32):
        _CLS.append(W)
    else:
        _CLS.append(P)


def pre_split(data: bytes):
    """Splits UTF-8 bytes into pre-tokens (list of bytes objects)."""
    out = []
    n = len(data)
    i = 0
    cls = _CLS
    while i < n:
        b = data[i]
        c = cls[b]
        if b == 32 and i + 1 < n and cls[data[i + 1]] in (L, P):
            c2 = cls[data[i + 1]]
            j = i + 2
            while j < n and cls[data[j]] == c2:
                j += 1
        elif c == D:
            j = i + 1
        elif c == L or c == P:
            j = i + 1
            while j < n and cls[data[j]] == c:
                j += 1
        else:
            j = i + 1
            while j < n and cls[data[j]] == W:
                j += 1
            if j < n and j - i >= 2 and data[j - 1] == 32 and cls[data[j]] in (L, P):
                j -= 1
        out.append(data[i:j])
        i = j
    return out


def merge_pair(ids, a, b, new):
    """Replaces each non-overlapping (a, b), scanning left to right, by `new`."""
    out = []
    i = 0
    n = len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class Tokenizer:
    def __init__(self, merges, specials):
        self.merges = [tuple(m) for m in merges]
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self.specials = dict(specials)
        self.vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.vocab_size = len(self.vocab) + len(self.specials)
        self.id_to_special = {v: k for k, v in self.specials.items()}
        self.bos = self.specials.get("<|bos|>")
        self.eos = self.specials.get("<|eos|>")
        self._cache = {}

    @classmethod
    def load(cls, path):
        with open(path) as f:
            j = json.load(f)
        tok = cls(j["merges"], j["special_tokens"])
        for i, h in enumerate(j["vocab"]):
            assert bytes.fromhex(h) == tok.vocab[i], "vocab/merges mismatch"
        return tok

    def encode_pretoken(self, piece: bytes):
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        ids = list(piece)
        ranks = self.ranks
        while len(ids) >= 2:
            best = None
            best_rank = None
            for k in range(len(ids) - 1):
                r = ranks.get((ids[k], ids[k + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank = r
                    best = (ids[k], ids[k + 1])
            if best is None:
                break
            ids = merge_pair(ids, best[0], best[1], 256 + best_rank)
        if len(self._cache) < 500000:
            self._cache[piece] = ids
        return ids

    def encode(self, text: str):
        out = []
        for piece in pre_split(text.encode("utf-8")):
            out.extend(self.encode_pretoken(piece))
        return out

    def decode_bytes(self, ids):
        return b"".join(self.vocab[i] if i < len(self.vocab) else b"" for i in ids)

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
