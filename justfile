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

# The main job on the bundled tiny model: make the fixture, then compare both backends.
demo: build
    ./target/release/csm-parity verify --frames 16
    ./target/release/csm-parity conform ../shared/conformance/csm-tiny-transformers || true

# Set up, then run the whole test suite (both backends, then the backend-neutral build).
test: setup
    cargo test
    cargo test --no-default-features --lib --tests

# Formatting and lints (warnings are errors).
lint: setup
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings
    cargo clippy --no-default-features --all-targets -- -D warnings

# Benchmarks: ms per frame per backend on the tiny fixture and on a random full-size CSM-1B.
bench: setup
    cargo bench --bench frames

# Remove build outputs (keeps .deps/).
clean:
    cargo clean
