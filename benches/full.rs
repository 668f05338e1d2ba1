//! Real-size benchmark (issue 16): `just bench-full` (= `cargo bench --profile dev --bench full`).
//!
//! On a randomly initialised checkpoint of the full CSM-1B shape (made here once by
//! `csm-parity fixture --kind csm-1b`, kept in `target/bench-full/`), runs the real commands —
//! `capture` in f32 and bf16, `verify --frames 8`, `sweep --jobs 2` (bf16: four models in
//! memory), `gate` (f32, the committed gate's token and logit thresholds) — as child processes
//! and prints per-frame time per backend, load times, peak RSS against the memory bound, and the
//! ratio to the memory-bandwidth floor. Also checks that a checkpoint without a tokenizer fails
//! fast, naming `--tokenizer`. Not run in CI (minutes of work on 2 cores); docs/performance.md
//! holds the numbers and how they were measured.
//!
//! Environment: BENCH_FULL_DIR (default target/bench-full), BENCH_FULL_FRAMES (frames per
//! capture, default 16), BENCH_BW_GBS (memory bandwidth of the floor, default 24 GB/s).
use csm_parity::model::csm::expected_tensors;
use csm_parity::model::{fixture, CsmConfig, DType};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const EXE: &str = env!("CARGO_BIN_EXE_csm-parity");
const GB: f64 = 1e9;

/// What one child process did.
struct Child {
    code: i32,
    secs: f64,
    peak_rss: u64,
    stdout: String,
    stderr: String,
}

/// Runs `csm-parity args…`, measuring wall time and the child's own peak RSS (wait4).
// The child is reaped by libc::wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run(args: &[&str]) -> Child {
    use std::os::unix::process::ExitStatusExt;
    eprintln!("$ csm-parity {}", args.join(" "));
    let start = Instant::now();
    let child = Command::new(EXE)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start csm-parity");
    let pid = child.id() as libc::pid_t;
    // Read the pipes on threads (a full pipe would block the child), then reap with wait4.
    let (mut out, mut err) = (child.stdout.unwrap(), child.stderr.unwrap());
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let mut status = 0;
    // SAFETY: plain libc call on our own child; rusage is a zeroed POD struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let secs = start.elapsed().as_secs_f64();
    let st = std::process::ExitStatus::from_raw(status);
    Child {
        code: st.code().unwrap_or(-1),
        secs,
        peak_rss: usage.ru_maxrss as u64 * 1024,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn check(c: &Child, what: &str) {
    if c.code != 0 {
        panic!(
            "{what} failed (exit {}):\n{}\n{}",
            c.code,
            c.stdout,
            c.stderr
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Bytes of weights one frame reads: the backbone once, the depth decoder and the projection
/// once per codebook after the first, both output heads once (the embeddings are gathered).
fn bytes_per_frame(cfg: &CsmConfig, dtype: DType) -> f64 {
    let c = cfg.audio_num_codebooks as f64;
    let mut n = 0f64;
    for (name, shape) in expected_tensors(cfg) {
        let numel = shape.iter().product::<usize>() as f64;
        n += if name.starts_with("backbone.")
            || name == "codebook0_head.weight"
            || name == "audio_head"
        {
            numel
        } else if name.starts_with("decoder.") || name == "projection.weight" {
            numel * (c - 1.0)
        } else {
            0.0
        };
    }
    n * dtype.size() as f64
}

fn json(c: &Child) -> serde_json::Value {
    serde_json::from_str(&c.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", c.stdout))
}

fn main() {
    let root: PathBuf = std::env::var_os("BENCH_FULL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-full"));
    let frames: usize = std::env::var("BENCH_FULL_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let bench_start = Instant::now();
    let cfg = CsmConfig::csm_1b();
    let params = cfg.parameter_count() as f64;
    let tiny = fixture::ensure_default_fixture().expect("tiny fixture");
    let tok = tiny.join("tokenizer.json");
    let tok = tok.to_str().unwrap();
    // The figure for this machine kind (DRAM read bandwidth); set BENCH_BW_GBS for yours.
    let bw: f64 = std::env::var("BENCH_BW_GBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24.0);
    println!(
        "CSM-1B shape: {:.3} B parameters; floor bandwidth {bw:.1} GB/s",
        params / 1e9
    );

    // 1. The random full-size checkpoints (once; reused by later runs).
    let mut dirs = std::collections::BTreeMap::new();
    for dt in [DType::BF16, DType::F32] {
        let dir = root.join(format!("csm-1b-random-{}", dt.name()));
        if !dir.join("model.safetensors").is_file() {
            let c = run(&[
                "fixture",
                "--kind",
                "csm-1b",
                "--dtype",
                dt.name(),
                "--out",
                dir.to_str().unwrap(),
            ]);
            check(&c, "fixture --kind csm-1b");
            println!(
                "made the random {} checkpoint in {:.1} s (peak RSS {:.2} GB)",
                dt.name(),
                c.secs,
                c.peak_rss as f64 / GB
            );
        }
        dirs.insert(dt.name(), dir.to_str().unwrap().to_string());
    }
    let runs = root.join("runs");
    let out = |name: &str| runs.join(name).to_str().unwrap().to_string();

    // 2. A checkpoint without tokenizer.json fails before any weight is read.
    let c = run(&[
        "capture",
        "--text",
        "Hello there.",
        "--model",
        &dirs["f32"],
        "--max-frames",
        "1",
        "--out",
        &out("no-tokenizer"),
    ]);
    let names = c.stderr.contains("--tokenizer");
    println!(
        "missing tokenizer: exit {} after {:.2} s, peak RSS {:.2} GB, message names --tokenizer: {names}",
        c.code,
        c.secs,
        c.peak_rss as f64 / GB
    );
    assert!(c.code == 2 && names, "{}", c.stderr);

    // 3. capture, both backends, f32 and bf16.
    println!(
        "\n| dtype | backend | load s | ms/frame (frames 1–{}) | floor ms | × floor | weights read GB/s |",
        frames - 1
    );
    println!("|---|---|---|---|---|---|---|");
    let mut memory = Vec::new();
    for dt in [DType::F32, DType::BF16] {
        let frames_s = frames.to_string();
        let c = run(&[
            "capture",
            "--text",
            "Hello there.",
            "--model",
            &dirs[dt.name()],
            "--tokenizer",
            tok,
            "--dtype",
            dt.name(),
            "--max-frames",
            &frames_s,
            "--no-audio",
            "--json",
            "--force",
            "--out",
            &out(&format!("capture-{}", dt.name())),
        ]);
        check(&c, "capture");
        let j = json(&c);
        let floor = bytes_per_frame(&cfg, dt) / (bw * GB) * 1e3;
        for r in j["runs"].as_array().unwrap() {
            let ms = r["mean_frame_ms"].as_f64().unwrap();
            println!(
                "| {} | {} | {:.1} | {:.0} | {:.0} | {:.2} | {:.1} |",
                dt.name(),
                r["backend"].as_str().unwrap(),
                r["load_ms"].as_f64().unwrap() / 1e3,
                ms,
                floor,
                ms / floor,
                bytes_per_frame(&cfg, dt) / (ms / 1e3) / GB
            );
        }
        let libs = 2.0 * params * dt.size() as f64;
        let bound = 1.1 * libs + 0.5 * GB;
        memory.push(format!(
            "| capture {} (both backends) | {:.2} | {:.2} | {:.2} | {} | checkpoint read + validated in {:.1} s |",
            dt.name(),
            libs / GB,
            bound / GB,
            c.peak_rss as f64 / GB,
            if (c.peak_rss as f64) <= bound { "yes" } else { "NO" },
            j["model_load_ms"].as_f64().unwrap_or(f64::NAN) / 1e3
        ));
        for n in j["notes"].as_array().into_iter().flatten() {
            println!("note: {}", n.as_str().unwrap_or_default());
        }
    }

    // 4. verify, sweep with two workers, gate.
    let mut other = Vec::new();
    let c = run(&[
        "verify",
        "--model",
        &dirs["f32"],
        "--tokenizer",
        tok,
        "--frames",
        "8",
    ]);
    other.push(("verify --frames 8 (f32)", c, 2.0 * params * 4.0));
    // A sweep reuses stored job results of the same spec: start from nothing so it is measured.
    let _ = std::fs::remove_dir_all(runs.join("sweep"));
    let c = run(&[
        "sweep",
        "--model",
        &dirs["bf16"],
        "--tokenizer",
        tok,
        "--dtype",
        "bf16",
        "--temps",
        "0.8",
        "--topk",
        "50",
        "--seeds",
        "2",
        "--max-frames",
        "3",
        "--jobs",
        "2",
        "--out",
        &out("sweep"),
    ]);
    // Each of the two workers holds its own pair of backends.
    other.push(("sweep --jobs 2 (bf16)", c, 4.0 * params * 2.0));
    let gate_toml = runs.join("gate-full.toml");
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::write(
        &gate_toml,
        format!(
            "model = {:?}\ntokenizer = {:?}\n\n[run]\ntexts = [\"Hello there.\"]\nseeds = [1, 2]\n\
             temperature = 0.8\ntop_k = 50\nmax_frames = 3\ndtype = \"f32\"\n\n[thresholds]\n\
             token_agreement_min = 0.99\nmax_logit_diff_max = 1e-3\ndivergence_frame_min = 3\n\
             hist_intersection_min = 0.0\nkl_hist_max = 100.0\nchi_square_p_min = 0.0\n",
            dirs["f32"], tok
        ),
    )
    .unwrap();
    let c = run(&["gate", "--config", gate_toml.to_str().unwrap()]);
    other.push(("gate (f32)", c, 2.0 * params * 4.0));
    println!("\n| command | exit | wall s | peak RSS GB |");
    println!("|---|---|---|---|");
    for (what, c, libs) in &other {
        println!(
            "| {what} | {} | {:.1} | {:.2} |",
            c.code,
            c.secs,
            c.peak_rss as f64 / GB
        );
        let bound = 1.1 * libs + 0.5 * GB;
        memory.push(format!(
            "| {what} | {:.2} | {:.2} | {:.2} | {} | |",
            libs / GB,
            bound / GB,
            c.peak_rss as f64 / GB,
            if (c.peak_rss as f64) <= bound {
                "yes"
            } else {
                "NO"
            }
        ));
        if c.code != 0 {
            let tail = |t: &str| {
                let mut l: Vec<&str> = t.lines().rev().take(15).collect();
                l.reverse();
                l.join("\n")
            };
            eprintln!(
                "{what}: exit {}\n{}\n{}",
                c.code,
                tail(&c.stdout),
                tail(&c.stderr)
            );
        }
    }
    println!("\n| run | libraries hold GB | bound GB (1.1× + 0.5) | peak RSS GB | within | |");
    println!("|---|---|---|---|---|---|");
    for m in &memory {
        println!("{m}");
    }
    println!(
        "\nbench-full took {:.1} min",
        bench_start.elapsed().as_secs_f64() / 60.0
    );
}
