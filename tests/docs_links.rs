//! The documentation holds together: every relative link in README.md and docs/*.md resolves,
//! README stays a front page, and every subcommand is in README's command table.
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files() -> Vec<PathBuf> {
    let mut v = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    v.extend(docs);
    v
}

/// Targets of inline links `[text](target)` outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            match after.find(')') {
                Some(j) => {
                    out.push(after[..j].to_string());
                    rest = &after[j..];
                }
                None => break,
            }
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            let t = target.split_whitespace().next().unwrap_or("");
            if t.is_empty() || t.starts_with('#') || t.contains("://") || t.starts_with("mailto:") {
                continue;
            }
            let path = t.split('#').next().unwrap();
            let resolved = file.parent().unwrap_or(Path::new(".")).join(path);
            checked += 1;
            if !resolved.exists() {
                broken.push(format!("{}: {t}", file.display()));
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} links found: the scanner is broken"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn readme_is_a_front_page_listing_every_command() {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let n = text.lines().count();
    assert!(
        n < 250,
        "README.md has {n} lines; reference material belongs in docs/"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_csm-parity"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Command names sit at two spaces; wrapped descriptions are indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 9, "parsed {commands:?} from --help");
    for c in commands {
        assert!(
            text.contains(&format!("`csm-parity {c}")),
            "README's command table does not list `csm-parity {c}`"
        );
    }
}

#[test]
fn every_just_recipe_is_documented() {
    let justfile = std::fs::read_to_string(repo().join("justfile")).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let recipes: Vec<&str> = justfile
        .lines()
        .filter(|l| {
            !l.starts_with(' ')
                && !l.starts_with('#')
                && !l.starts_with("set ")
                && !l.starts_with("export ")
        })
        .filter_map(|l| l.split(':').next())
        .map(|n| n.split_whitespace().next().unwrap_or(""))
        .filter(|n| !n.is_empty() && *n != "default")
        .collect();
    assert!(recipes.len() >= 5, "{recipes:?}");
    for r in recipes {
        assert!(
            readme.contains(&format!("`just {r}`")),
            "README does not document `just {r}`"
        );
    }
}
