"""An independent port of the tiny CSM (backbone + depth decoder) in Python MLX (float32), written
as an outside user would, recording its run with the csm-parity capture helper. Used by
tests/outside_port.rs; bugs can be planted on purpose.

    python3 mlx_csm.py --model DIR --out RUN --prompt-ids 1,40,41 --frames 6 \
        --temp 0.9 --top-k 5 --seed 3 --noise shared|native \
        [--bug context-loss|no-rope-scaling|topk-drop-ties]

The architecture is read from docs (DESIGN §2): torchtune-layout weights, RMSNorm, RoPE on
interleaved pairs with Llama-3 frequency scaling, grouped-query attention, SwiGLU; each frame
runs the backbone over the whole sequence (no KV cache), samples codebook 0 from its last
hidden state, then the depth decoder over [h, codebook 0, ...] for codebooks 1 … C-1.
"""
import argparse
import json
import math

import mlx.core as mx
import numpy as np

import csm_parity_run as cpr


def inv_freq(cfg, scaled=True):
    """RoPE inverse frequencies (float64 maths, float32 result), Llama-3 scaling when asked."""
    hd = cfg["embed_dim"] // cfg["num_heads"]
    out = []
    for i in range(hd // 2):
        inv = 1.0 / cfg["rope_base"] ** (2 * i / hd)
        if scaled and cfg.get("use_scaled_rope"):
            orig = cfg["old_context_len"]
            lo, hi = cfg["low_freq_factor"], cfg["high_freq_factor"]
            wavelen = 2 * math.pi / inv
            if wavelen < orig / hi:
                pass
            elif wavelen > orig / lo:
                inv = inv / cfg["scale_factor"]
            else:
                smooth = (orig / wavelen - lo) / (hi - lo)
                inv = (1 - smooth) * inv / cfg["scale_factor"] + smooth * inv
        out.append(inv)
    return mx.array(np.array(out, dtype=np.float32))


class Transformer:
    """A Llama-style stack (torchtune names under `prefix`), no cache: forward(x [L, D], positions)."""

    def __init__(self, w, prefix, cfg, rope_scaling):
        self.w, self.p, self.cfg = w, prefix, cfg
        self.nh, self.nkv = cfg["num_heads"], cfg["num_kv_heads"]
        self.hd = cfg["embed_dim"] // self.nh
        self.eps = cfg["norm_eps"]
        self.freq = inv_freq(cfg, rope_scaling)

    def norm(self, x, scale):
        return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + self.eps) * scale

    def rope(self, x, positions):
        # x [H, L, hd]: rotate the interleaved pairs (x[2i], x[2i+1]) by position * inv_freq[i].
        h, l, d = x.shape
        ang = positions.astype(mx.float32)[:, None] * self.freq[None, :]
        cos, sin = mx.cos(ang), mx.sin(ang)
        pairs = x.reshape(h, l, d // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        return mx.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(h, l, d)

    def __call__(self, x, positions):
        w, p = self.w, self.p
        l = x.shape[0]
        mask = mx.triu(mx.full((l, l), -math.inf, dtype=mx.float32), k=1)
        for i in range(self.cfg["num_layers"]):
            q_ = f"{p}.layers.{i}."
            xn = self.norm(x, w[q_ + "sa_norm.scale"])
            q = (xn @ w[q_ + "attn.q_proj.weight"].T).reshape(l, self.nh, self.hd).transpose(1, 0, 2)
            k = (xn @ w[q_ + "attn.k_proj.weight"].T).reshape(l, self.nkv, self.hd).transpose(1, 0, 2)
            v = (xn @ w[q_ + "attn.v_proj.weight"].T).reshape(l, self.nkv, self.hd).transpose(1, 0, 2)
            q, k = self.rope(q, positions), self.rope(k, positions)
            rep = self.nh // self.nkv
            k, v = mx.repeat(k, rep, axis=0), mx.repeat(v, rep, axis=0)
            s = (q @ k.transpose(0, 2, 1)) * (1.0 / math.sqrt(self.hd)) + mask
            a = mx.softmax(s, axis=-1) @ v
            x = x + a.transpose(1, 0, 2).reshape(l, -1) @ w[q_ + "attn.output_proj.weight"].T
            xn = self.norm(x, w[q_ + "mlp_norm.scale"])
            g = xn @ w[q_ + "mlp.w1.weight"].T
            g = g * mx.sigmoid(g)
            x = x + (g * (xn @ w[q_ + "mlp.w3.weight"].T)) @ w[q_ + "mlp.w2.weight"].T
        return self.norm(x, w[f"{p}.norm.scale"])


class Csm:
    def __init__(self, model_dir, rope_scaling=True):
        self.cfg = json.load(open(f"{model_dir}/config.json"))
        self.w = mx.load(f"{model_dir}/model.safetensors")
        self.C, self.V = self.cfg["audio_num_codebooks"], self.cfg["audio_vocab_size"]
        self.backbone = Transformer(self.w, "backbone", self.cfg["backbone"], rope_scaling)
        self.decoder = Transformer(self.w, "decoder", self.cfg["decoder"], rope_scaling)

    def embed(self, rows):
        """rows: [(tokens [C+1], mask [C+1])] -> [L, D]: sum of the unmasked columns' embeddings."""
        C, V, w = self.C, self.V, self.w
        toks = np.array([t for t, _ in rows], dtype=np.int32)
        mask = mx.array(np.array([m for _, m in rows], dtype=np.float32))
        audio_ids = mx.array(toks[:, :C] + np.arange(C, dtype=np.int32)[None, :] * V)
        audio = w["audio_embeddings.weight"][audio_ids]            # [L, C, D]
        text = w["text_embeddings.weight"][mx.array(toks[:, C])]    # [L, D]
        return (audio * mask[:, :C, None]).sum(axis=1) + text * mask[:, C:]

    def audio_input(self, cb, token):
        e = self.w["audio_embeddings.weight"][cb * self.V + int(token)]
        return (e @ self.w["projection.weight"].T)[None, :]


def sample(logits, temp, top_k, q, drop_ties):
    """My sampler on one row [V]: temperature, top-k, softmax, argmax(probs / q)."""
    v = logits.shape[-1]
    if temp == 0:
        p = mx.zeros((v,), dtype=mx.float32)
        t = int(mx.argmax(logits).item())
        return t, np.asarray(p.at[t].add(1.0))
    scaled = logits / mx.array(temp, dtype=mx.float32)
    if 0 < top_k < v:
        if drop_ties:  # keeps exactly k entries: a tie at the k-th value loses one of its twins
            keep = mx.argsort(-scaled)[:top_k]
            kept = mx.full((v,), -math.inf, dtype=mx.float32)
            kept[keep] = scaled[keep]
            scaled = kept
        else:
            kth = mx.sort(scaled)[v - top_k]
            scaled = mx.where(scaled >= kth, scaled, mx.array(-math.inf, dtype=mx.float32))
    probs = mx.softmax(scaled, axis=-1)
    token = int(mx.argmax(probs / q).item())
    return token, np.asarray(probs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt-ids", required=True)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--temp", type=float, default=0.9)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--noise", choices=["shared", "native"], default="shared")
    ap.add_argument("--bug", choices=["none", "context-loss", "no-rope-scaling", "topk-drop-ties"],
                    default="none")
    a = ap.parse_args()
    mx.set_default_device(mx.cpu)
    m = Csm(a.model, rope_scaling=a.bug != "no-rope-scaling")
    C, V = m.C, m.V
    prompt = [int(t) for t in a.prompt_ids.split(",")]
    run = cpr.open_run(a.out, codebooks=C, vocab=V, backend="mlx-python-csm", model_kind="csm",
                       prompt_ids=prompt, temperature=a.temp, top_k=a.top_k, seed=a.seed,
                       noise="greedy" if a.temp == 0 else a.noise,
                       manifest={"backend": {"library_version": mx.__version__, "device": "cpu"},
                                 "model": {"path": a.model}})
    rows = [([0] * C + [t], [0] * C + [1]) for t in prompt]
    key = mx.random.key(a.seed)
    drop = a.bug == "topk-drop-ties"
    stop = "max_frames"
    for f in range(a.frames):
        if a.bug == "context-loss" and f > 0:
            # Forgets everything before the newest frame (kept at its position).
            h = m.backbone(m.embed(rows[-1:]), mx.array([len(rows) - 1]))[-1]
        else:
            h = m.backbone(m.embed(rows), mx.arange(len(rows)))[-1]
        if a.noise == "shared":
            q_all = -mx.log(mx.array(cpr.shared_frame_uniforms(a.seed, f, C, V)))
        else:
            key, sub = mx.random.split(key)
            q_all = -mx.log1p(-mx.random.uniform(shape=(C, V), key=sub))
        tokens, logits_rows, probs_rows = [], [], []
        dec = None
        for cb in range(C):
            if cb == 0:
                logits = h @ m.w["codebook0_head.weight"].T
            else:
                out = m.decoder(dec, mx.arange(dec.shape[0]))[-1]
                logits = out @ m.w["audio_head"][cb - 1]
            t, probs = sample(logits, a.temp, a.top_k, q_all[cb], drop)
            emb = m.audio_input(cb, t)
            dec = mx.concatenate([(h @ m.w["projection.weight"].T)[None, :], emb]) if cb == 0 \
                else mx.concatenate([dec, emb])
            tokens.append(t)
            logits_rows.append(np.asarray(logits))
            probs_rows.append(probs)
        run.append(np.array(tokens), logits=np.stack(logits_rows), probs=np.stack(probs_rows))
        rows.append((tokens + [0], [1] * C + [0]))
        if all(t == 0 for t in tokens):
            stop = "eos"
            break
    print(run.close(stop))


if __name__ == "__main__":
    main()
