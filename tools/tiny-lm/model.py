"""The tiny decoder-only transformer (PyTorch reference). See README.md "Model".

Per layer (pre-norm):  h = x + Attn(RMSNorm(x));  x' = h + MLP(RMSNorm(h))
RMSNorm(x) = x / sqrt(mean(x^2) + eps) * weight
Attn: q = x Wq^T, k = x Wk^T, v = x Wv^T (no biases); RoPE (rotate-half) on q and k;
      query head q reads KV head floor(q / (n_heads / n_kv_heads)); causal softmax of
      q k^T / sqrt(head_dim); out = concat(heads) Wo^T.
MLP (SwiGLU): down( silu(gate(x)) * up(x) ).
Logits: RMSNorm(x_final) E^T with E the (tied) token embedding.
"""
import math
import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, **kw):
        self.vocab_size = kw.get("vocab_size", 4096)
        self.hidden_size = kw.get("hidden_size", 256)
        self.num_layers = kw.get("num_layers", 4)
        self.num_heads = kw.get("num_heads", 8)
        self.num_kv_heads = kw.get("num_kv_heads", 2)
        self.head_dim = kw.get("head_dim", 32)
        self.intermediate_size = kw.get("intermediate_size", 512)
        self.rope_theta = kw.get("rope_theta", 10000.0)
        self.rms_norm_eps = kw.get("rms_norm_eps", 1e-5)
        self.max_position = kw.get("max_position", 1024)

    def to_dict(self):
        return dict(self.__dict__)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim, positions, theta):
    """cos/sin of shape [T, head_dim]: angle(p, j) = p * theta^(-2*(j mod d/2)/d)."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, dtype=torch.float64) * 2.0 / head_dim))
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(torch.float32), ang.sin().to(torch.float32)


def apply_rope(x, cos, sin):
    """x: [..., T, head_dim]. rotate_half(x) = concat(-x[d/2:], x[:d/2])."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, want_attn=False):
        c = self.c
        B, T, _ = x.shape
        G = c.num_heads // c.num_kv_heads
        q = self.q_proj(x).view(B, T, c.num_heads, c.head_dim).transpose(1, 2)   # B,H,T,hd
        k = self.k_proj(x).view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)  # B,KV,T,hd
        v = self.v_proj(x).view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        # group query heads: head q -> kv head q // G
        qg = q.reshape(B, c.num_kv_heads, G * T, c.head_dim)
        s = torch.matmul(qg, k.transpose(-1, -2)) * (1.0 / math.sqrt(c.head_dim))  # B,KV,G*T,T
        s = s.view(B, c.num_kv_heads, G, T, T) + mask
        p = torch.softmax(s, dim=-1)
        o = torch.matmul(p.view(B, c.num_kv_heads, G * T, T), v)  # B,KV,G*T,hd
        o = o.view(B, c.num_heads, T, c.head_dim).transpose(1, 2).reshape(B, T, c.num_heads * c.head_dim)
        out = self.o_proj(o)
        if want_attn:
            return out, p.view(B, c.num_heads, T, T), (q, k, v)
        return out


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask, want_attn=False):
        if want_attn:
            a, p, qkv = self.self_attn(self.input_layernorm(x), cos, sin, mask, True)
            h = x + a
            return h + self.mlp(self.post_attention_layernorm(h)), p, qkv
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class TinyLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.num_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self._mask_cache = {}

    def init_weights(self, seed):
        g = torch.Generator().manual_seed(seed)
        std = 0.02
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                else:
                    s = std
                    if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                        s = std / math.sqrt(2 * self.c.num_layers)
                    p.copy_(torch.randn(p.shape, generator=g) * s)

    def _mask(self, T):
        m = self._mask_cache.get(T)
        if m is None:
            m = torch.full((T, T), float("-inf")).triu(1)
            self._mask_cache[T] = m
        return m

    def forward(self, ids, want_attn=False, want_hidden=False):
        B, T = ids.shape
        pos = torch.arange(T)
        cos, sin = rope_tables(self.c.head_dim, pos, self.c.rope_theta)
        mask = self._mask(T)
        x = self.embed_tokens(ids)
        attns, hiddens, qkvs = [], [x], []
        for layer in self.layers:
            if want_attn:
                x, p, qkv = layer(x, cos, sin, mask, True)
                attns.append(p)
                qkvs.append(qkv)
            else:
                x = layer(x, cos, sin, mask)
            hiddens.append(x)
        logits = torch.matmul(self.norm(x), self.embed_tokens.weight.t())
        if want_attn or want_hidden:
            return logits, {"attn": attns, "hidden": hiddens, "qkv": qkvs}
        return logits
