//! Gives binaries, tests and benches an rpath to the native libraries (libmlx.so from the
//! pinned MLX wheel, libtorch's lib dir), so nothing needs LD_LIBRARY_PATH.
use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if env::var_os("CARGO_FEATURE_MLX").is_some() {
        if let Ok(dir) = env::var("DEP_MLX_LIBDIR") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
    if env::var_os("CARGO_FEATURE_TORCH").is_some() {
        let mut version = "unknown".to_string();
        if let Ok(dir) = env::var("LIBTORCH") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
            if let Ok(v) = std::fs::read_to_string(format!("{dir}/build-version")) {
                version = v.trim().to_string();
            }
        }
        println!("cargo:rustc-env=CSM_PARITY_LIBTORCH_VERSION={version}");
    }
}
