"""Write a csm-parity run directory from your own pipeline (numpy only).

    import csm_parity_run as cpr
    run = cpr.open_run("runs/my-port", codebooks=32, vocab=2051, backend="my-port",
                       model_kind="csm", prompt_ids=ids, temperature=0.9, top_k=50, seed=42,
                       noise="shared")
    for f in range(frames):
        u = cpr.shared_frame_uniforms(42, f, 32, 2051)   # the harness's noise, [C, V] float32
        ...                                              # your model + sampler
        run.append(tokens, logits=logits, probs=probs)   # tokens [C]; logits/probs [C, V]
    run.close("eos")                                     # renames runs/my-port.partial -> runs/my-port

Then `csm-parity rescore runs/my-port --out runs/ref` and `csm-parity diff runs/ref runs/my-port`.
The run format is described in docs/run-format.md, the noise in docs/shared-noise.md.
"""
import json
import os
import shutil
import time

import numpy as np

FORMAT = "csm-parity-run"
FORMAT_VERSION = 1
__version__ = "0.1.0"

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix_int(z):
    """SplitMix64's finalizer on one Python int (mod 2^64)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix_array(z):
    """SplitMix64's finalizer on a uint64 array (numpy wraps mod 2^64)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shared_key(seed, frame, codebook):
    """The 64-bit key of one sampling step (docs/shared-noise.md, step 1)."""
    inner = _mix_int(seed ^ 0x5EED)
    return _mix_int(_mix_int(inner ^ ((frame * _GOLDEN) & _M64)) ^ codebook)


def shared_uniforms(seed, frame, codebook, vocab):
    """The harness's uniforms for one sampling step: float32 [vocab], bit-identical to
    `csm-parity noise` (u[frame, codebook, :]) and to what capture's shared noise feeds both
    backends. Use q = -log(u) (float32) and token = argmax(probs / q)."""
    for name, v in (("seed", seed), ("frame", frame), ("codebook", codebook)):
        if not (0 <= int(v) <= _M64):
            raise ValueError(f"{name} must lie in 0..2^64-1, got {v}")
    if int(vocab) < 1:
        raise ValueError(f"vocab must be at least 1, got {vocab}")
    key = np.uint64(shared_key(int(seed), int(frame), int(codebook)))
    with np.errstate(over="ignore"):
        idx = np.arange(1, int(vocab) + 1, dtype=np.uint64)
        bits = _mix_array(key + idx * np.uint64(_GOLDEN))
    return uniform_from_bits(bits)


def uniform_from_bits(bits):
    """The uniform of 64 random bits (uint64 array or int): the top 23 bits k, then
    (k + 0.5) / 2^23. Both steps are exact in float32, so u lies strictly inside (0, 1)
    (2^-24 ... 1 - 2^-24) and q = -log(u) is never 0. Returns float32."""
    bits = np.asarray(bits, dtype=np.uint64)
    k = (bits >> np.uint64(41)).astype(np.float32)  # top 23 bits: exact in float32
    return (k + np.float32(0.5)) / np.float32(8388608.0)


def shared_frame_uniforms(seed, frame, codebooks, vocab):
    """The uniforms of a whole frame: float32 [codebooks, vocab]."""
    return np.stack([shared_uniforms(seed, frame, c, vocab) for c in range(int(codebooks))])


def reference_sample(logits, temperature, top_k, u):
    """The harness's reference sampler on one step (or a frame) in float32: logits [..., V],
    shared uniforms u of the same shape. Returns (token [...] int, probs [..., V] float32).
    logits / temperature; keep entries >= the k-th largest (ties kept); softmax;
    token = argmax(probs / -log(u)). Temperature 0 is greedy (u unused)."""
    logits = np.asarray(logits, dtype=np.float32)
    if temperature == 0:
        token = np.argmax(logits, axis=-1)
        probs = np.zeros_like(logits)
        np.put_along_axis(probs, token[..., None], np.float32(1), axis=-1)
        return token, probs
    scaled = logits / np.float32(temperature)
    v = scaled.shape[-1]
    if 0 < int(top_k) < v:
        kth = np.sort(scaled, axis=-1)[..., v - int(top_k)][..., None]
        scaled = np.where(scaled >= kth, scaled, np.float32(-np.inf))
    e = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    q = -np.log(np.asarray(u, dtype=np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        token = np.argmax(probs / q, axis=-1)
    return token, probs


class RunError(Exception):
    """Bad input to the run writer."""


def _is_our_partial(path):
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


class RunWriter:
    """One run being written to `<dir>.partial`; `close()` renames it to `<dir>`.

    Only the fields a comparison needs are required; everything else in the manifest is
    optional (pass `manifest={...}` to add or override fields, nested dicts are merged).
    """

    def __init__(self, dir, *, codebooks, vocab, backend, model_kind, prompt_ids,
                 temperature, top_k, seed, noise, mode="independent", prompt_text="",
                 speaker=0, post="none", logits="f32", probs="f32", manifest=None):
        self.dir = os.fspath(dir)
        self.partial = self.dir + ".partial"
        if os.path.exists(self.dir) and (not os.path.isdir(self.dir) or os.listdir(self.dir)):
            raise RunError(f"{self.dir}: exists and is not an empty directory; choose another output")
        if os.path.exists(self.partial):
            if not _is_our_partial(self.partial):
                raise RunError(f"{self.partial}: exists and is not an unfinished run; remove it yourself")
            shutil.rmtree(self.partial)
        if noise not in ("shared", "native", "greedy"):
            raise RunError(f"noise must be shared, native or greedy, got {noise!r}")
        if mode not in ("independent", "teacher", "hybrid"):
            raise RunError(f"mode must be independent, teacher or hybrid, got {mode!r}")
        if model_kind not in ("csm", "llama"):
            raise RunError(f"model_kind must be csm or llama, got {model_kind!r}")
        for name, st in (("logits", logits), ("probs", probs)):
            if st not in ("f32", "f16", "none"):
                raise RunError(f"{name} storage must be f32, f16 or none, got {st!r}")
        self.codebooks, self.vocab = int(codebooks), int(vocab)
        if self.codebooks < 1 or self.vocab < 1:
            raise RunError("codebooks and vocab must be at least 1")
        self.storage = {"logits": logits, "probs": probs}
        self.manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool_version": f"csm_parity_run.py {__version__}",
            "status": "partial",
            "backend": {"name": str(backend)},
            "model": {"kind": model_kind},
            "prompt": {"text": str(prompt_text), "speaker": int(speaker),
                       "token_ids": [int(t) for t in prompt_ids]},
            "sampler": {"mode": mode, "noise": noise, "temperature": float(temperature),
                        "top_k": int(top_k), "seed": int(seed), "post": post},
            "frames": 0,
            "codebooks": self.codebooks,
            "vocab": self.vocab,
            "logits_storage": logits,
            "probs_storage": probs,
        }
        if manifest:
            _merge(self.manifest, manifest)
        self.rows = {"tokens": [], "post_tokens": [], "fed_tokens": [], "logits": [], "probs": []}
        self.step_us = []
        self.closed = False
        os.makedirs(self.partial)
        self._write_manifest()
        self._t = time.perf_counter()

    def _write_manifest(self):
        path = os.path.join(self.partial, "manifest.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)

    def _row(self, name, value, dtype, shape):
        a = np.asarray(value)
        if a.shape != shape:
            raise RunError(f"frame {len(self.step_us)}: {name} has shape {a.shape}, expected {shape}")
        if dtype == np.int32:
            if not np.issubdtype(a.dtype, np.integer):
                raise RunError(f"frame {len(self.step_us)}: {name} must be integers, got {a.dtype}")
            if a.size and (a.min() < 0 or a.max() >= self.vocab):
                raise RunError(f"frame {len(self.step_us)}: {name} outside the vocab 0..{self.vocab}")
        return a.astype(dtype)

    def append(self, tokens, *, post_tokens=None, fed_tokens=None, logits=None, probs=None,
               step_us=None):
        """Records one frame: `tokens` [C] sampled; `post_tokens` [C] after post-processing
        (default: tokens); `fed_tokens` [C] what was fed back to the model if not the sampled
        tokens (teacher forcing, a forced port); `logits` / `probs` [C, V] (required when the
        run stores them); `step_us` the frame's time in µs (default: time since the last call)."""
        if self.closed:
            raise RunError("append after close")
        now = time.perf_counter()
        c, v = self.codebooks, self.vocab
        t = self._row("tokens", tokens, np.int32, (c,))
        pt = t if post_tokens is None else self._row("post_tokens", post_tokens, np.int32, (c,))
        ft = t if fed_tokens is None else self._row("fed_tokens", fed_tokens, np.int32, (c,))
        for name, val in (("logits", logits), ("probs", probs)):
            if self.storage[name] == "none":
                continue
            if val is None:
                raise RunError(f"frame {len(self.step_us)}: {name} missing but the run stores "
                               f"{name} as {self.storage[name]}")
            self.rows[name].append(self._row(name, val, np.float32, (c, v)))
        self.rows["tokens"].append(t)
        self.rows["post_tokens"].append(pt)
        self.rows["fed_tokens"].append(ft)
        self.step_us.append(float((now - self._t) * 1e6 if step_us is None else step_us))
        self._t = time.perf_counter()

    def close(self, stop_reason="unknown"):
        """Writes the arrays and the complete manifest, then renames `<dir>.partial` to `<dir>`.
        Returns `<dir>`."""
        if self.closed:
            raise RunError("close called twice")
        c, v = self.codebooks, self.vocab
        p = self.partial

        def save(name, rows, dtype, inner):
            arr = np.stack(rows).astype(dtype) if rows else np.zeros((0,) + inner, dtype)
            with open(os.path.join(p, name + ".npy"), "wb") as f:
                np.save(f, np.ascontiguousarray(arr))
                f.flush()
                os.fsync(f.fileno())

        save("tokens", self.rows["tokens"], np.int32, (c,))
        save("post_tokens", self.rows["post_tokens"], np.int32, (c,))
        if any(not np.array_equal(a, b) for a, b in zip(self.rows["fed_tokens"], self.rows["tokens"])):
            save("fed_tokens", self.rows["fed_tokens"], np.int32, (c,))
        save("step_us", [np.float64(s) for s in self.step_us], np.float64, ())
        for name in ("logits", "probs"):
            st = self.storage[name]
            if st != "none":
                save(name, self.rows[name], np.float32 if st == "f32" else np.float16, (c, v))
        self.manifest["status"] = "complete"
        self.manifest["frames"] = len(self.step_us)
        self.manifest["stop_reason"] = str(stop_reason)
        total = sum(self.step_us) / 1e3
        self.manifest.setdefault("timings", {})
        self.manifest["timings"].setdefault("total_ms", total)
        if self.step_us:
            steady = self.step_us[1:] or self.step_us
            self.manifest["timings"].setdefault("prefill_ms", self.step_us[0] / 1e3)
            self.manifest["timings"].setdefault("mean_frame_ms", sum(steady) / len(steady) / 1e3)
        self._write_manifest()
        if os.path.isdir(self.dir):
            os.rmdir(self.dir)  # empty (checked when opened)
        os.rename(p, self.dir)
        self.closed = True
        return self.dir

    def abort(self):
        """Removes the unfinished `<dir>.partial`."""
        if not self.closed and os.path.isdir(self.partial):
            shutil.rmtree(self.partial)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.close()
        return False


def open_run(dir, **kwargs):
    """Starts a run at `dir` (written to `dir + ".partial"`); see RunWriter."""
    return RunWriter(dir, **kwargs)
