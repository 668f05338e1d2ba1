# csm-parity tasks. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

export PYTHONPATH := justfile_directory() + "/.deps/py"

# Show the recipes.
default:
    @just --list

# Install the native runtimes (apt: cmake, libclang-dev; pinned MLX wheels; CPU libtorch) into .deps/. Idempotent.
setup:
    bash scripts/setup.sh

# Build the csm-parity binary (both backends).
build: setup
    cargo build --release

# The main job on the bundled tiny model: verify, conform (CSM and Mimi), capture both pipelines with audio, diff with an HTML report (players, spectrograms).
demo: build
    ./target/release/csm-parity verify --frames 16
    if [ -d ../shared/conformance/csm-tiny-transformers ]; then ./target/release/csm-parity conform ../shared/conformance/csm-tiny-transformers; fi
    if [ -d ../shared/conformance/mimi-tiny-transformers ]; then ./target/release/csm-parity conform ../shared/conformance/mimi-tiny-transformers; fi
    ./target/release/csm-parity capture --text "Hello from csm-parity." --max-frames 32 --out runs/demo --force
    ./target/release/csm-parity diff runs/demo --report runs/demo/report
    @echo "open runs/demo/report/index.html"

# Inject every known MLX-port bug and print the detection table.
selftest: setup
    cargo run --release -- selftest

# Set up, then run the whole test suite (both backends, then the backend-neutral build), then the parity gate.
test: setup && gate
    cargo test
    cargo test --no-default-features --lib --tests

# Parity regression gate on the tiny fixture (fixtures/gate.toml); JUnit XML in target/gate-junit.xml. Exit 1 when a check fails.
gate: setup
    cargo run -- gate --config fixtures/gate.toml --junit target/gate-junit.xml --markdown target/gate-summary.md

# Sweep temperatures × top-k on the tiny fixture (results in runs/sweep/: sweep.md, sweep.csv, sweep.json, heatmaps).
sweep: setup
    cargo run -- sweep --temps 0.6,0.8 --topk 50,100 --seeds 8 --max-frames 16 --out runs/sweep

# Formatting and lints (warnings are errors).
lint: setup
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings
    cargo clippy --no-default-features --all-targets -- -D warnings

# Benchmarks: ms per frame per backend (tiny fixture, random full-size CSM-1B), diff throughput.
bench: setup
    cargo bench --bench frames
    cargo bench --no-default-features --bench diff
    cargo bench --bench sweep

# Real-size run on this machine (not in CI; ~10 min on 2 cores): a random CSM-1B-shaped checkpoint (made once in target/bench-full/), capture f32 and bf16, verify, sweep --jobs 2, gate; ms/frame vs the bandwidth floor, load times, peak RSS vs the memory bound.
bench-full: setup
    cargo bench --profile dev --bench full

# Remove build outputs (keeps .deps/).
clean:
    cargo clean
