//! Small shared helpers: atomic writes, peak memory, progress bars.
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A sibling temp path of `path` (same directory, so the rename is atomic).
pub fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` through a temp file and a rename: readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = temp_sibling(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("{}: cannot write", path.display()))
}

/// This process's peak resident set size in bytes (`VmHWM` of `/proc/self/status`); `None` where
/// the kernel does not report it (not Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The progress bar of long work on standard error: `{what} done/len`, elapsed and eta, starting
/// at `done`. Hidden when `enabled` is off, when standard error is not a terminal (logs, CI) or
/// when there is nothing to do.
pub fn progress_bar(enabled: bool, len: u64, done: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() || len == 0 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let template =
        format!("{{spinner}} {what} {{pos}}/{{len}} {{wide_bar}} {{elapsed_precise}} eta {{eta}}");
    bar.set_style(
        indicatif::ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar
}
