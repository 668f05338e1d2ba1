//! What csm-parity may write, and what it never touches.
//!
//! Every directory the tool creates as a whole (a report, a selftest folder, a fixture, a
//! capture's output folder) carries a marker file, [`MARKER`], naming what it is. A directory
//! is replaced only when it is recognisably ours: it carries the marker of the same kind, or it
//! is a complete run directory written by csm-parity (and then only with `--force`). Anything
//! else — a user's notes, an input run, a file where a directory is expected — is refused with a
//! message naming the path. New content is written beside the old under a temporary name and
//! swapped in only once complete.
//!
//! Files (`--junit`, `--markdown`) are written through a temporary sibling and a rename, except
//! when the path is a symlink or not a regular file (`/dev/stdout`, a FIFO): then the tool
//! writes through it.
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Marker file inside a directory written by csm-parity; its content is the kind.
pub const MARKER: &str = ".csm-parity";
/// Lock file of an output directory (held while a command writes into it).
pub const LOCK: &str = ".csm-parity.lock";

/// What kind of directory the tool wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// `diff --report DIR`.
    Report,
    /// `selftest --out DIR`.
    Selftest,
    /// `fixture --out DIR` (and the bundled fixtures).
    Fixture,
    /// `capture --out DIR` (holds `torch/`, `mlx/`).
    Capture,
}

impl OutputKind {
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Report => "report",
            OutputKind::Selftest => "selftest",
            OutputKind::Fixture => "fixture",
            OutputKind::Capture => "capture",
        }
    }
}

/// What a path holds, as far as replacing it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    Missing,
    EmptyDir,
    /// A directory carrying our marker of this kind.
    Ours(String),
    /// A run directory (manifest.json with csm-parity's run format), complete or not.
    Run {
        complete: bool,
    },
    /// A file, symlink to a file, device…
    NotADir,
    /// A directory we did not write.
    Foreign,
}

/// Classifies `path`.
pub fn existing(path: &Path) -> Result<Existing> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Missing),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    if !meta.is_dir() {
        return Ok(Existing::NotADir);
    }
    let mut entries =
        std::fs::read_dir(path).with_context(|| format!("{}: cannot list", path.display()))?;
    if entries.next().is_none() {
        return Ok(Existing::EmptyDir);
    }
    if let Ok(kind) = std::fs::read_to_string(path.join(MARKER)) {
        return Ok(Existing::Ours(kind.trim().to_string()));
    }
    if is_fixture(path) {
        return Ok(Existing::Ours(OutputKind::Fixture.name().to_string()));
    }
    if let Some(complete) = run_status(path) {
        return Ok(Existing::Run { complete });
    }
    Ok(Existing::Foreign)
}

/// A fixture written by csm-parity (before fixtures carried the marker): its config.json
/// holds `fixture_version`.
fn is_fixture(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("fixture_version").is_some())
}

/// The `format` of a run manifest: what marks a run directory as this tool's.
pub const RUN_FORMAT_NAME: &str = "csm-parity-run";

/// `Some(complete)` when `dir/manifest.json` is a csm-parity run manifest.
fn run_status(dir: &Path) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    (v.get("format")?.as_str()? == RUN_FORMAT_NAME)
        .then(|| v.get("status").and_then(|s| s.as_str()) == Some("complete"))
}

/// Refuses `path` unless it is missing, empty, or ours of `kind`. `flag` names the option in
/// the message (`--report`).
pub fn check_replaceable(path: &Path, kind: OutputKind, flag: &str) -> Result<()> {
    match existing(path)? {
        Existing::Missing | Existing::EmptyDir => Ok(()),
        Existing::Ours(k) if k == kind.name() => Ok(()),
        Existing::Ours(k) => bail!(
            "{flag} {}: holds a csm-parity {k}, not a {}; choose another path",
            path.display(),
            kind.name()
        ),
        Existing::Run { .. } => bail!(
            "{flag} {}: is a run directory; csm-parity never replaces a run with a {} (choose another path)",
            path.display(),
            kind.name()
        ),
        Existing::NotADir => bail!(
            "{flag} {}: exists and is not a directory; expected a directory (or a new path)",
            path.display()
        ),
        Existing::Foreign => bail!(
            "{flag} {}: exists and was not written by csm-parity; it will not be replaced (remove it yourself or choose another path)",
            path.display()
        ),
    }
}

/// A directory written under a temporary sibling name and swapped into place by
/// [`StagedDir::commit`]; dropped uncommitted, the temporary directory is removed.
pub struct StagedDir {
    target: PathBuf,
    staging: PathBuf,
    kind: OutputKind,
    flag: &'static str,
    done: bool,
}

impl StagedDir {
    /// Checks that `target` may be written (see [`check_replaceable`]) and creates the staging
    /// directory with the marker.
    pub fn begin(target: &Path, kind: OutputKind, flag: &'static str) -> Result<StagedDir> {
        check_replaceable(target, kind, flag)?;
        let name = target
            .file_name()
            .with_context(|| format!("{flag} {}: not a directory name", target.display()))?;
        let parent = parent_of(target);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{flag} {}: cannot create", parent.display()))?;
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".tmp{}", std::process::id()));
        let staging = parent.join(tmp);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("{}: cannot remove", staging.display()))?;
        }
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("{flag} {}: cannot create", staging.display()))?;
        std::fs::write(staging.join(MARKER), kind.name())
            .with_context(|| format!("{}: cannot write", staging.display()))?;
        Ok(StagedDir {
            target: target.to_path_buf(),
            staging,
            kind,
            flag,
            done: false,
        })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Swaps the staged directory into place (re-checking the target first).
    pub fn commit(mut self) -> Result<PathBuf> {
        check_replaceable(&self.target, self.kind, self.flag)?;
        replace_dir(&self.staging, &self.target)?;
        self.done = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Empties `dir` for a new output of `kind` when it is missing, empty or a previous output of
/// that kind (see [`check_replaceable`]), and marks it; anything else is refused.
pub fn claim_dir(dir: &Path, kind: OutputKind, flag: &str) -> Result<()> {
    check_replaceable(dir, kind, flag)?;
    if let Existing::Ours(_) = existing(dir)? {
        std::fs::remove_dir_all(dir).with_context(|| {
            format!(
                "{flag} {}: cannot clear the previous {}",
                dir.display(),
                kind.name()
            )
        })?;
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{flag} {}: cannot create", dir.display()))?;
    std::fs::write(dir.join(MARKER), kind.name())
        .with_context(|| format!("{flag} {}: cannot write", dir.display()))
}

/// Moves `new` to `target`; an existing `target` is renamed aside first and removed only after
/// the new one is in place.
pub fn replace_dir(new: &Path, target: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(target);
    if meta.is_err() {
        return std::fs::rename(new, target)
            .with_context(|| format!("cannot rename {} to {}", new.display(), target.display()));
    }
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let old = parent_of(target).join(format!(".{name}.old{}", std::process::id()));
    std::fs::rename(target, &old).with_context(|| {
        format!(
            "{}: cannot move the previous output aside",
            target.display()
        )
    })?;
    if let Err(e) = std::fs::rename(new, target) {
        let _ = std::fs::rename(&old, target);
        return Err(e)
            .with_context(|| format!("{}: cannot put the new output in place", target.display()));
    }
    std::fs::remove_dir_all(&old)
        .with_context(|| format!("{}: cannot remove the previous output", old.display()))
}

/// The directory a path lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Claims `dir` for writing by one process: creates it (with the marker of `kind` when it is
/// new) and takes an exclusive lock on `dir/.csm-parity.lock`. A second process gets an error
/// naming the holder. The lock ends when the returned guard is dropped (or the process dies).
pub struct DirLock {
    _file: File,
    /// The directory, when this lock created it (removed again if nothing else was put in it).
    created: Option<PathBuf>,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let Some(dir) = &self.created {
            let only_ours = std::fs::read_dir(dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .all(|e| e.file_name() == MARKER || e.file_name() == LOCK)
            });
            if only_ours {
                let _ = std::fs::remove_file(dir.join(MARKER));
                let _ = std::fs::remove_file(dir.join(LOCK));
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

impl DirLock {
    pub fn acquire(dir: &Path, kind: OutputKind, flag: &str) -> Result<DirLock> {
        let before = existing(dir)?;
        let fresh = matches!(before, Existing::Missing | Existing::EmptyDir);
        if matches!(before, Existing::NotADir) {
            bail!(
                "{flag} {}: exists and is not a directory; expected a directory",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{flag} {}: cannot create", dir.display()))?;
        if fresh {
            std::fs::write(dir.join(MARKER), kind.name())
                .with_context(|| format!("{flag} {}: cannot write", dir.display()))?;
        }
        let path = dir.join(LOCK);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                bail!(
                    "{flag} {}: another csm-parity process is writing here ({}); wait for it or choose another output",
                    dir.display(),
                    if holder.is_empty() { "pid unknown".to_string() } else { holder.to_string() }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("{}: cannot lock", path.display()))
            }
        }
        file.set_len(0)?;
        write!(file, "pid {}", std::process::id())?;
        file.flush()?;
        Ok(DirLock {
            _file: file,
            created: (before == Existing::Missing).then(|| dir.to_path_buf()),
        })
    }
}

/// Writes `bytes` to the file `path`: atomically (temp + rename) for a regular or new file;
/// through the path for a symlink, device or FIFO (so `/dev/stdout` stays what it is).
pub fn write_file(path: &Path, bytes: &[u8], flag: &str) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => bail!(
            "{flag} {}: is a directory; expected a file path",
            path.display()
        ),
        Ok(m) if !m.is_file() => {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .with_context(|| format!("{flag} {}: cannot open", path.display()))?;
            f.write_all(bytes)
                .and_then(|_| f.flush())
                .with_context(|| format!("{flag} {}: cannot write", path.display()))
        }
        _ => crate::util::write_atomic(path, bytes).with_context(|| flag.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_and_refuses_foreign_directories() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("x");
        assert_eq!(existing(&d).unwrap(), Existing::Missing);
        std::fs::create_dir(&d).unwrap();
        assert_eq!(existing(&d).unwrap(), Existing::EmptyDir);
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        assert_eq!(existing(&d).unwrap(), Existing::Foreign);
        let e = check_replaceable(&d, OutputKind::Report, "--report").unwrap_err();
        assert!(e.to_string().contains("not written by csm-parity"), "{e}");
        let f = t.path().join("file");
        std::fs::write(&f, "x").unwrap();
        let e = check_replaceable(&f, OutputKind::Report, "--report").unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn staged_dir_replaces_only_its_own_kind() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("rep");
        let s = StagedDir::begin(&d, OutputKind::Report, "--report").unwrap();
        std::fs::write(s.path().join("a"), "1").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "1");
        let s = StagedDir::begin(&d, OutputKind::Report, "--report").unwrap();
        std::fs::write(s.path().join("b"), "2").unwrap();
        s.commit().unwrap();
        assert!(!d.join("a").exists() && d.join("b").exists());
        // A selftest may not replace a report; an uncommitted stage leaves nothing behind.
        assert!(StagedDir::begin(&d, OutputKind::Selftest, "--out").is_err());
        let s = StagedDir::begin(&t.path().join("new"), OutputKind::Report, "--report").unwrap();
        let staging = s.path().to_path_buf();
        drop(s);
        assert!(!staging.exists() && !t.path().join("new").exists());
    }

    #[test]
    fn lock_is_exclusive_and_names_the_holder() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("out");
        let a = DirLock::acquire(&d, OutputKind::Capture, "--out").unwrap();
        let e = DirLock::acquire(&d, OutputKind::Capture, "--out")
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(a);
        DirLock::acquire(&d, OutputKind::Capture, "--out").unwrap();
    }

    #[test]
    fn writes_through_non_regular_paths() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real.xml");
        std::fs::write(&real, "old").unwrap();
        let link = t.path().join("link.xml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_file(&link, b"new", "--junit").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
        write_file(Path::new("/dev/null"), b"x", "--junit").unwrap();
        assert!(write_file(t.path(), b"x", "--junit").is_err());
    }
}
