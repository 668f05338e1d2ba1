//! Kernel isolation: in one process MLX computes with MLX's BLAS and libtorch with its own MKL.
//!
//! Both the mlx-cpu wheel's BLAS/LAPACK and libtorch_cpu.so (MKL inside) export `sgemm_`,
//! `cblas_sgemm`, `sgetrf_`, …; unless `just setup` renames MLX's (scripts/isolate-mlx-blas.sh),
//! the dynamic linker binds each name to its first definition in the process and one library
//! computes with the other's kernels (docs/performance.md). Two independent proofs:
//! - the dynamic linker's own account (`LD_DEBUG=bindings`, every symbol bound at start with
//!   `LD_BIND_NOW`) of the `csm-parity` binary: no binding from an MLX library to a libtorch
//!   library or back, except the C++ standard library's shared template code (namespace `std`);
//! - a numerical fingerprint: MLX's f32 matmul is bit-identical to the reference BLAS's
//!   algorithm (each product rounded, summed in order, no FMA), computed here in Rust, and
//!   libtorch's differs from it and from MLX's (MKL blocks and fuses).
#![cfg(all(feature = "mlx", feature = "torch", target_os = "linux"))]
use csm_parity::rng::SplitMix64;
use regex::Regex;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Which library family a loaded object belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Mlx,
    Torch,
    Other,
}

/// One line of `LD_DEBUG=bindings`: (from file, to file, symbol).
fn parse_bindings(text: &str) -> Vec<(String, String, String)> {
    let re =
        Regex::new(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: \w+ symbol `([^']+)'").unwrap();
    re.captures_iter(text)
        .map(|c| (c[1].to_string(), c[2].to_string(), c[3].to_string()))
        .collect()
}

fn side_of(path: &str, torch_dirs: &[String]) -> Side {
    let p = Path::new(path);
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let dir = p
        .parent()
        .map(|d| d.to_string_lossy().to_string())
        .unwrap_or_default();
    if name.starts_with("libmlx") || dir.ends_with("mlx_cpu.libs") || dir.ends_with("mlx/lib") {
        Side::Mlx
    } else if torch_dirs.contains(&dir) {
        Side::Torch
    } else {
        Side::Other
    }
}

/// A C++ name in namespace `std` (template code both libraries instantiate from the same
/// headers; the dynamic linker unifies such vague-linkage definitions by design).
fn is_cxx_std(sym: &str) -> bool {
    let re = Regex::new(r"^_Z(T[VIST]|GV)?Z?N?[KVRO]*St|^_ZT[IS](P|PDo)?F").unwrap();
    re.is_match(sym)
}

/// The bindings that cross between the two libraries, and whether each side's sgemm call was
/// seen landing in its own library.
struct Crossing {
    crossings: Vec<(String, String, String)>,
    mlx_sgemm_own: bool,
    torch_sgemm_own: bool,
}

fn classify(bindings: &[(String, String, String)]) -> Crossing {
    let torch_dirs: Vec<String> = bindings
        .iter()
        .flat_map(|(a, b, _)| [a, b])
        .filter(|p| p.ends_with("/libtorch_cpu.so"))
        .filter_map(|p| {
            Path::new(p)
                .parent()
                .map(|d| d.to_string_lossy().to_string())
        })
        .collect();
    let mut out = Crossing {
        crossings: vec![],
        mlx_sgemm_own: false,
        torch_sgemm_own: false,
    };
    for (from, to, sym) in bindings {
        let (a, b) = (side_of(from, &torch_dirs), side_of(to, &torch_dirs));
        let crossing = matches!((a, b), (Side::Mlx, Side::Torch) | (Side::Torch, Side::Mlx));
        if crossing && !is_cxx_std(sym) {
            out.crossings.push((from.clone(), to.clone(), sym.clone()));
        }
        if a == Side::Mlx
            && b == Side::Mlx
            && from.contains("libmlx")
            && sym.ends_with("cblas_sgemm")
        {
            out.mlx_sgemm_own = true;
        }
        if a == Side::Torch && b == Side::Torch && sym == "sgemm_" {
            out.torch_sgemm_own = true;
        }
    }
    out
}

#[test]
fn the_dynamic_linker_binds_no_kernel_symbol_across_the_two_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bindings");
    let out = Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .arg("--version")
        .env("LD_DEBUG", "bindings")
        .env("LD_BIND_NOW", "1")
        .env("LD_DEBUG_OUTPUT", &log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The dynamic linker appends the pid to LD_DEBUG_OUTPUT.
    let mut text = String::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        text += &std::fs::read_to_string(e.unwrap().path()).unwrap();
    }
    let bindings = parse_bindings(&text);
    assert!(
        bindings.len() > 1000,
        "LD_DEBUG=bindings gave {} bindings: the check saw nothing",
        bindings.len()
    );
    let c = classify(&bindings);
    // Not vacuous: each library's own sgemm entry point was bound, inside that library.
    assert!(
        c.mlx_sgemm_own,
        "no binding of libmlx.so's cblas_sgemm into MLX's own BLAS was seen"
    );
    assert!(
        c.torch_sgemm_own,
        "no binding of libtorch_cpu.so's sgemm_ into libtorch was seen"
    );
    if !c.crossings.is_empty() {
        let mut by_pair: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (a, b, s) in &c.crossings {
            let short = |p: &str| {
                Path::new(p)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            };
            by_pair
                .entry((short(a), short(b)))
                .or_default()
                .push(s.clone());
        }
        let lines: Vec<String> = by_pair
            .iter()
            .map(|((a, b), s)| {
                format!(
                    "  {a} -> {b}: {} symbols, e.g. {}",
                    s.len(),
                    s[..s.len().min(6)].join(" ")
                )
            })
            .collect();
        panic!(
            "{} symbols bind across MLX and libtorch (run `just setup`: it renames MLX's \
             BLAS/LAPACK, scripts/isolate-mlx-blas.sh):\n{}",
            c.crossings.len(),
            lines.join("\n")
        );
    }
}

/// The reference (netlib) BLAS's sgemm for one output element: products rounded to f32, added
/// in order from zero, no fused multiply-add (Rust never fuses `a * b + c`).
fn reference_dot(a: &[f32], b: impl Iterator<Item = f32>) -> f32 {
    a.iter().zip(b).fold(0.0f32, |acc, (&x, y)| acc + x * y)
}

/// A [m, k] × [k, n] input on which summation order and fusing show: values spread over
/// several binades (so partial sums round differently when blocked), plus one crafted row where
/// `1·(-(1+2⁻¹¹)) + (1+2⁻¹²)²` is exactly 0 unfused and 2⁻²⁴ fused.
fn crafted(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64::new(27);
    let mut a: Vec<f32> = (0..m * k)
        .map(|_| (rng.normal() * 2f64.powi(rng.below(12) as i32 - 6)) as f32)
        .collect();
    let mut b: Vec<f32> = (0..k * n)
        .map(|_| (rng.normal() * 2f64.powi(rng.below(12) as i32 - 6)) as f32)
        .collect();
    let e = 1.0 + 2f32.powi(-12);
    for l in 0..k {
        a[l] = 0.0;
        b[l * n] = 0.0;
    }
    a[0] = 1.0;
    b[0] = -(1.0 + 2f32.powi(-11));
    a[1] = e;
    b[n] = e;
    (a, b)
}

fn reference_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = reference_dot(&a[i * k..(i + 1) * k], (0..k).map(|l| b[l * n + j]));
        }
    }
    c
}

fn mlx_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, transposed: bool) -> Vec<f32> {
    use mlx_rs::Array;
    let x = Array::from_slice(a, &[m as i32, k as i32]);
    let y = if transposed {
        // The weight as the stacks hold it: [n, k] in memory, used through a transposed view.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        Array::from_slice(&bt, &[n as i32, k as i32]).t()
    } else {
        Array::from_slice(b, &[k as i32, n as i32])
    };
    let c = x.matmul(&y).unwrap();
    c.eval().unwrap();
    c.as_slice::<f32>().to_vec()
}

fn torch_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    use tch::Tensor;
    let x = Tensor::from_slice(a).view([m as i64, k as i64]);
    let y = Tensor::from_slice(b).view([k as i64, n as i64]);
    Vec::<f32>::try_from(x.matmul(&y).flatten(0, -1)).unwrap()
}

fn differing(x: &[f32], y: &[f32]) -> usize {
    x.iter()
        .zip(y)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}

#[test]
fn each_library_s_sgemm_leaves_its_own_fingerprint() {
    // 64 rows: large enough that libtorch takes MKL's blocked sgemm (for one or two rows, and
    // for an 8 x 8 output, libtorch's own small-matrix path sums in order without fusing, as
    // the reference BLAS does; docs/performance.md).
    let (m, k, n) = (64, 1024, 64);
    let (a, b) = crafted(m, k, n);
    let reference = reference_matmul(&a, &b, m, k, n);
    assert_eq!(reference[0], 0.0, "the crafted element is 0 without fusing");
    let mlx = mlx_matmul(&a, &b, m, k, n, false);
    let mlx_t = mlx_matmul(&a, &b, m, k, n, true);
    let torch = torch_matmul(&a, &b, m, k, n);
    let elems = m * n;
    let (d_mlx, d_mlx_t) = (differing(&mlx, &reference), differing(&mlx_t, &reference));
    let (d_torch, d_both) = (differing(&torch, &reference), differing(&torch, &mlx));
    eprintln!(
        "elements differing from the reference BLAS's algorithm: mlx {d_mlx}/{elems}, \
         mlx (transposed weight) {d_mlx_t}/{elems}, torch {d_torch}/{elems}; torch vs mlx {d_both}"
    );
    assert_eq!(
        (d_mlx, d_mlx_t),
        (0, 0),
        "MLX's f32 matmul is not its bundled reference BLAS (crafted element: {:e}): its sgemm \
         is bound to another library's (libtorch's MKL?) — run `just setup`",
        mlx[0]
    );
    assert!(
        d_torch > elems / 2 && d_both > elems / 2,
        "libtorch's f32 matmul matches the reference BLAS's algorithm on {} of {elems} elements: \
         its sgemm_ is bound to MLX's reference BLAS",
        elems - d_torch
    );
}

#[test]
fn the_binding_check_itself_fails_on_a_cross_binding_and_allows_std_templates() {
    let lines = "\
  1: binding file /x/.deps/py/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0 [0] to /x/.deps/libtorch/lib/libtorch_cpu.so [0]: normal symbol `sgemm_'
  1: binding file /x/.deps/py/mlx/lib/libmlx.so [0] to /x/.deps/py/mlx/lib/../../mlx_cpu.libs/libblas-bd8a282c.so.3.10.0 [0]: normal symbol `cblas_sgemm'
  1: binding file /x/.deps/libtorch/lib/libtorch_cpu.so [0] to /x/.deps/libtorch/lib/libtorch_cpu.so [0]: normal symbol `sgemm_'
  1: binding file /x/.deps/libtorch/lib/libc10.so [0] to /x/.deps/py/mlx/lib/libmlx.so [0]: normal symbol `_ZTVSt18bad_variant_access'
  1: binding file /x/.deps/py/mlx/lib/libmlx.so [0] to /x/.deps/libtorch/lib/libtorch_cpu.so [0]: normal symbol `_ZNKRSt7__cxx1115basic_stringbufIcSt11char_traitsIcESaIcEE3strEv' [GLIBCXX_3.4.29]
  1: binding file /x/.deps/libtorch/lib/libtorch_cpu.so [0] to /x/.deps/py/mlx_cpu.libs/liblapack-86b2c207.so.3.10.0 [0]: normal symbol `sgetrf_'
";
    let b = parse_bindings(lines);
    assert_eq!(b.len(), 6);
    let c = classify(&b);
    let syms: Vec<&str> = c.crossings.iter().map(|x| x.2.as_str()).collect();
    assert_eq!(syms, ["sgemm_", "sgetrf_"]);
    assert!(c.mlx_sgemm_own && c.torch_sgemm_own);
    assert!(!is_cxx_std("_ZN3mlx4core6matmulERKNS0_5arrayES3_"));
    assert!(!is_cxx_std("_ZN2at6native2mmERKNS_6TensorES3_"));
}
