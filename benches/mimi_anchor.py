"""The anchor for `cargo bench --bench mimi`: transformers' `MimiModel.decode` doing the same work.

10 s of audio (125 frames x 32 codebooks, random codes) decoded by a randomly initialised
Mimi of the full `kyutai/mimi` shape (`MimiConfig()`: hidden 512, 64 filters, 8 transformer
layers, 32 codebooks), f32 on the CPU, whole sequence at once, after one warm-up decode of 8
frames; prints the median of BENCH_REPEATS (default 3) timed decodes and the real-time factor.
The weights are transformers' own random initialisation (the work does not depend on the
values). Threads: torch's default (one per core), like libtorch in the Rust bench.

Needs torch and transformers (not a dependency of this project; see docs/codec.md, "Speed"):
    pip install --target /tmp/anchor-py torch transformers
    PYTHONPATH=/tmp/anchor-py python3 benches/mimi_anchor.py
"""
import os
import time

import torch
from transformers import MimiConfig, MimiModel


def main():
    torch.manual_seed(0)
    cfg = MimiConfig()
    model = MimiModel(cfg).eval()
    frames = 125
    g = torch.Generator().manual_seed(11)
    codes = torch.randint(0, cfg.codebook_size, (1, cfg.num_quantizers, frames), generator=g)
    spf = int(cfg.sampling_rate / cfg.frame_rate)
    seconds = frames * spf / cfg.sampling_rate
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    params = sum(p.numel() for p in model.parameters())
    print(
        f"transformers {__import__('transformers').__version__} MimiModel.decode, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {params} parameters, "
        f"{frames} frames = {seconds:.1f} s of audio, f32"
    )
    with torch.inference_mode():
        warm = model.decode(codes[:, :, :8]).audio_values
        assert torch.isfinite(warm).all()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = model.decode(codes).audio_values
            times.append(time.perf_counter() - t)
            assert out.shape[-1] == frames * spf, out.shape
    times.sort()
    median = times[len(times) // 2]
    print(
        f"  transformers {median:8.3f} s per decode (median of {repeats})  RTF {median / seconds:.3f}"
    )


if __name__ == "__main__":
    main()
