#!/usr/bin/env bash
# Gives MLX's bundled BLAS/LAPACK names of their own, so that in one process MLX computes with its
# own kernels and libtorch with its MKL (docs/performance.md, "Which BLAS each library uses").
#
# Why: the mlx-cpu wheel's libblas/liblapack export the standard Fortran and CBLAS names (sgemm_,
# cblas_sgemm, sgetrf_, ...), and so does libtorch_cpu.so (MKL, linked in). The dynamic linker binds
# each name to its first definition in the process, so with libtorch loaded first MLX's matmuls ran
# on MKL, and with MLX loaded first libtorch's LAPACK calls ran on the reference BLAS. Renaming every
# name that MLX's two libraries define (prefix `mlxblas_`), in those libraries and in every MLX
# library that calls them, leaves no name for the other library to capture, whatever the load order.
#
# Usage: isolate-mlx-blas.sh PY_PREFIX PATCHELF   (PY_PREFIX holds mlx/ and mlx_cpu.libs/)
# Idempotent: names already prefixed are left alone; each file is patched on a copy and renamed
# into place; the check at the end fails loudly if libmlx.so still calls an unprefixed BLAS name.
set -euo pipefail
prefix_dir=$1
patchelf=$2
P=mlxblas_
libs_dir=$prefix_dir/mlx_cpu.libs
[ -d "$libs_dir" ] || { echo "isolate-mlx-blas: $libs_dir not found (is mlx-cpu installed?)" >&2; exit 2; }
command -v nm >/dev/null || { echo "isolate-mlx-blas: needs nm (binutils)" >&2; exit 2; }

shopt -s nullglob
providers=("$libs_dir"/libblas-*.so* "$libs_dir"/liblapack-*.so*)
[ ${#providers[@]} -ge 2 ] || { echo "isolate-mlx-blas: no libblas/liblapack in $libs_dir" >&2; exit 2; }

# Every dynamic name the two libraries define, without the prefix (so a second run maps the same).
map=$(mktemp)
trap 'rm -f "$map" "$map".*' EXIT
for lib in "${providers[@]}"; do
  nm -D --defined-only "$lib" | awk 'NF == 3 { sub(/@.*/, "", $3); print $3 }'
done | sed "s/^$P//" | sort -u | awk -v p="$P" '{ print $1 " " p $1 }' >"$map"

# The files that define or call one of those names: the providers, libmlx.so, Python's extension.
cut -d' ' -f1 "$map" >"$map.names"
for f in "${providers[@]}" "$prefix_dir"/mlx/lib/*.so* "$prefix_dir"/mlx/*.so; do
  nm -D "$f" 2>/dev/null | awk '{ sub(/@.*/, "", $NF); print $NF }' >"$map.syms" || true
  if grep -qxFf "$map.names" "$map.syms"; then
    cp -p "$f" "$f.isolating"
    "$patchelf" --rename-dynamic-symbols "$map" "$f.isolating"
    mv -f "$f.isolating" "$f"
    echo "isolate-mlx-blas: renamed MLX's BLAS/LAPACK names in ${f#"$prefix_dir"/}" >&2
  fi
done

# Check: libmlx.so calls the prefixed cblas_sgemm and no unprefixed BLAS/LAPACK name.
mlx=$prefix_dir/mlx/lib/libmlx.so
nm -D --undefined-only "$mlx" | awk '{ print $2 }' >"$map.syms"
grep -qx "${P}cblas_sgemm" "$map.syms" ||
  { echo "isolate-mlx-blas: $mlx does not call ${P}cblas_sgemm after renaming" >&2; exit 1; }
if grep -xFf "$map.names" "$map.syms" >"$map.left"; then
  echo "isolate-mlx-blas: $mlx still calls unprefixed names: $(head -3 "$map.left" | tr '\n' ' ')" >&2
  exit 1
fi
