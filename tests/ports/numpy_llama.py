"""An independent Llama LM port in numpy (float32), written as an outside user would, with the
csm-parity capture helper. Used by tests/outside_port.rs; bugs can be planted on purpose.

    python3 numpy_llama.py --model DIR --out RUN --prompt-ids 261,40,41 --tokens 12 \
        --temp 0.9 --top-k 5 --seed 3 --noise shared|native [--bug context-loss|topk-drop-ties|no-rope-scaling]
"""
import argparse
import json
import math
import struct

import numpy as np

import csm_parity_run as cpr


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(meta["shape"])
    return out


def inv_freq(cfg, scaled=True):
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = cfg["rope_theta"]
    freqs = []
    for i in range(hd // 2):
        inv = 1.0 / base ** (2 * i / hd)
        s = cfg.get("rope_scaling")
        if s and scaled:
            orig = s["original_max_position_embeddings"]
            low, high = orig / s["low_freq_factor"], orig / s["high_freq_factor"]
            wavelen = 2 * math.pi / inv
            if wavelen < high:
                pass
            elif wavelen > low:
                inv = inv / s["factor"]
            else:
                smooth = (orig / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
                inv = (1 - smooth) * inv / s["factor"] + smooth * inv
        freqs.append(inv)
    return np.array(freqs, dtype=np.float32)


class Llama:
    def __init__(self, model_dir, rope_scaling=True):
        self.cfg = json.load(open(f"{model_dir}/config.json"))
        self.w = load_safetensors(f"{model_dir}/model.safetensors")
        c = self.cfg
        self.nh, self.nkv = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c.get("head_dim") or c["hidden_size"] // self.nh
        self.eps = np.float32(c["rms_norm_eps"])
        self.freq = inv_freq(c, rope_scaling)
        self.head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])

    def norm(self, x, scale):
        var = np.mean(x * x, axis=-1, keepdims=True)
        return (x / np.sqrt(var + self.eps)) * scale

    def rope(self, x, positions):
        # split halves (HF): out = x*cos + rotate_half(x)*sin
        ang = positions[:, None].astype(np.float32) * self.freq[None, :]
        cos, sin = np.cos(ang), np.sin(ang)
        h = self.hd // 2
        x1, x2 = x[..., :h], x[..., h:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def logits(self, ids, positions):
        """Logits of the last position after feeding ids at positions (no cache)."""
        x = self.w["model.embed_tokens.weight"][np.array(ids)]
        L = len(ids)
        mask = np.triu(np.full((L, L), -np.inf, dtype=np.float32), 1)
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            xn = self.norm(x, self.w[p + "input_layernorm.weight"])
            q = (xn @ self.w[p + "self_attn.q_proj.weight"].T).reshape(L, self.nh, self.hd).transpose(1, 0, 2)
            k = (xn @ self.w[p + "self_attn.k_proj.weight"].T).reshape(L, self.nkv, self.hd).transpose(1, 0, 2)
            v = (xn @ self.w[p + "self_attn.v_proj.weight"].T).reshape(L, self.nkv, self.hd).transpose(1, 0, 2)
            q, k = self.rope(q, positions), self.rope(k, positions)
            rep = self.nh // self.nkv
            k, v = np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0)
            s = q @ k.transpose(0, 2, 1) / np.float32(math.sqrt(self.hd)) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            a = (s / s.sum(-1, keepdims=True)) @ v
            x = x + a.transpose(1, 0, 2).reshape(L, -1) @ self.w[p + "self_attn.o_proj.weight"].T
            xn = self.norm(x, self.w[p + "post_attention_layernorm.weight"])
            g = xn @ self.w[p + "mlp.gate_proj.weight"].T
            g = g / (np.float32(1) + np.exp(-g))
            x = x + (g * (xn @ self.w[p + "mlp.up_proj.weight"].T)) @ self.w[p + "mlp.down_proj.weight"].T
        h = self.norm(x[-1:], self.w["model.norm.weight"])
        return (h @ self.head.T).astype(np.float32)  # [1, V]


def sample(logits, temp, top_k, q, drop_ties):
    """My sampler: temperature, top-k, softmax, argmax(probs / q)."""
    scaled = logits / np.float32(temp)
    v = scaled.shape[-1]
    if 0 < top_k < v:
        if drop_ties:  # keeps exactly k entries: drops ties at the k-th value
            keep = np.argsort(-scaled[0], kind="stable")[:top_k]
            kept = np.full_like(scaled, -np.inf)
            kept[0, keep] = scaled[0, keep]
            scaled = kept
        else:
            kth = np.sort(scaled, axis=-1)[..., v - top_k][..., None]
            scaled = np.where(scaled >= kth, scaled, np.float32(-np.inf))
    e = np.exp(scaled - scaled.max(-1, keepdims=True))
    probs = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        token = np.argmax(probs / q, axis=-1)
    return token, probs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--temp", type=float, default=0.9)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--noise", choices=["shared", "native"], default="shared")
    ap.add_argument("--bug", choices=["none", "context-loss", "topk-drop-ties", "no-rope-scaling"], default="none")
    a = ap.parse_args()
    m = Llama(a.model, rope_scaling=a.bug != "no-rope-scaling")
    V = m.head.shape[0]
    eos = m.cfg["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    prompt = [int(t) for t in a.prompt_ids.split(",")]
    rng = np.random.default_rng(a.seed)
    run = cpr.open_run(a.out, codebooks=1, vocab=V, backend="numpy-llama", model_kind="llama",
                       prompt_ids=prompt, temperature=a.temp, top_k=a.top_k, seed=a.seed,
                       noise=a.noise, manifest={"backend": {"library_version": np.__version__},
                                                "model": {"path": a.model}})
    ids = list(prompt)
    stop = "max_tokens"
    for f in range(a.tokens):
        if a.bug == "context-loss" and f > 0:
            logits = m.logits(ids[-1:], np.array([len(ids) - 1]))  # forgets everything before
        else:
            logits = m.logits(ids, np.arange(len(ids)))
        if a.noise == "shared":
            q = -np.log(cpr.shared_frame_uniforms(a.seed, f, 1, V))
        else:
            q = rng.exponential(size=(1, V)).astype(np.float32)
        token, probs = sample(logits, a.temp, a.top_k, q, a.bug == "topk-drop-ties")
        run.append(token, logits=logits, probs=probs)
        ids.append(int(token[0]))
        if int(token[0]) in eos:
            stop = "eos_token"
            break
    print(run.close(stop))


if __name__ == "__main__":
    main()
