//! `cargo xtask layout`: no module of a crate imports one that imports it
//! back, directly or through others.
//!
//! Each source file under a crate's `src/` is a module (`a/b.rs` is `a::b`,
//! `a/mod.rs` is `a`, `lib.rs` or `main.rs` the root). Its imports are the
//! paths it names with `crate::` and `super::` in code (comments and the
//! trailing `#[cfg(test)] mod tests` left out), resolved to the module that
//! defines them: a module path as far as it goes, or an item the root hands
//! on (`pub use a::b::{X, Y};`) to the module it comes from. A module that
//! names its own submodule (`pub use child::X`, `child::f()`) imports it.
//! The root hands items on and is left out. Plain text, std only: no
//! parser, so the rules above are the whole of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates checked, by their `src/` folder.
pub(crate) const CRATES: [&str; 4] = [
    "crates/halfclose-io/src",
    "crates/proxy-core/src",
    "crates/proxy-tower/src",
    "crates/halfclose-proxy/src",
];

/// Each module, and the modules it imports.
pub(crate) type Graph = BTreeMap<String, BTreeSet<String>>;

/// The cycles of the crate whose sources are in `src`, as module paths; and
/// the import graph, for printing.
pub(crate) fn cycles(src: &Path) -> Result<(Vec<Vec<String>>, Graph), String> {
    let mut files = Vec::new();
    walk(src, &mut files).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut modules = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap_or(file);
        let Some(module) = module_of(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        modules.insert(module, code_of(&text));
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let root = modules.get("").cloned().unwrap_or_default();
    let handed_on = reexports(&root, "");
    let mut graph = Graph::new();
    for (module, code) in &modules {
        if module.is_empty() {
            continue;
        }
        let mut to = BTreeSet::new();
        for path in paths(code) {
            let absolute = match path.strip_prefix("crate::") {
                Some(rest) => rest.to_owned(),
                None => {
                    let mut base: Vec<&str> = module.split("::").collect();
                    let mut rest = path.as_str();
                    while let Some(r) = rest.strip_prefix("super::") {
                        base.pop();
                        rest = r;
                    }
                    join(&base.join("::"), rest)
                }
            };
            if let Some(target) = resolve(&absolute, &known, &handed_on)
                && target != *module
                && !target.is_empty()
            {
                to.insert(target);
            }
        }
        // A module that hands on or calls into its own submodule imports it.
        for path in child_paths(code) {
            let absolute = join(module, &path);
            if let Some(target) = resolve(&absolute, &known, &handed_on)
                && target != *module
                && target.starts_with(&format!("{module}::"))
            {
                to.insert(target);
            }
        }
        graph.insert(module.clone(), to);
    }
    Ok((find_cycles(&graph), graph))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `a/b.rs` -> `a::b`, `a/mod.rs` -> `a`, `lib.rs` -> ``; test-only files
/// (`tests.rs`, `*_tests.rs`, `differential.rs`) -> none.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if stem == "tests" || stem.ends_with("_tests") || stem == "differential" {
        return None;
    }
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    Some(parts.join("::"))
}

/// The code of a file: line comments out, and everything from a trailing
/// `#[cfg(test)]` followed by `mod` on.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            // A test module declared in its own file stays declared, but
            // names nothing; one written inline is the end of the code.
            let next = lines.peek().map(|n| n.trim()).unwrap_or_default();
            if next.ends_with(';') {
                lines.next();
                continue;
            }
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            // Not inside a string: good enough for the paths looked for.
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path starting `crate::` or `super::`, with `{...}` groups expanded
/// (one path per item).
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let begin = from + at;
            from = begin + start.len();
            // `$crate::` in a macro is the crate too; `xcrate::` is not.
            if code[..begin]
                .chars()
                .next_back()
                .is_some_and(|c| is_ident(c) && c != '$')
            {
                continue;
            }
            expand(&code[begin..], &mut out);
        }
    }
    out
}

/// The path at the front of `s`, with a `{...}` group expanded.
fn expand(s: &str, out: &mut Vec<String>) {
    let end = s
        .find(|c: char| !(is_ident(c) || c == ':'))
        .unwrap_or(s.len());
    let head = s[..end].trim_end_matches(':');
    if s[end..].starts_with('{') && s[..end].ends_with("::") {
        let mut depth = 0;
        let mut item = String::new();
        let mut items = Vec::new();
        for c in s[end + 1..].chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        for item in items {
            let item = item.trim();
            if item.is_empty() || item == "self" {
                out.push(head.to_owned());
                continue;
            }
            let mut nested = Vec::new();
            expand(&format!("{head}::{item}"), &mut nested);
            out.extend(nested);
        }
    } else {
        out.push(head.to_owned());
    }
}

/// Paths that name a submodule of the module itself: `child::x` where
/// `child` is not `crate`, `super`, `self` or `std`-like (filtered later by
/// resolving against the known modules).
fn child_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let text: String = bytes.iter().collect();
    let mut from = 0;
    while let Some(at) = text[from..].find("::") {
        let colon = from + at;
        from = colon + 2;
        let start = text[..colon]
            .rfind(|c: char| !is_ident(c))
            .map_or(0, |i| i + 1);
        let first = &text[start..colon];
        if first.is_empty()
            || matches!(first, "crate" | "super" | "self" | "Self" | "std" | "core")
            || text[..start].ends_with("::")
            || text[..start].ends_with('$')
        {
            continue;
        }
        let mut path = Vec::new();
        expand(&text[start..], &mut path);
        out.extend(path);
    }
    out
}

fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_owned(),
        (_, true) => base.to_owned(),
        _ => format!("{base}::{rest}"),
    }
}

/// What a module hands on with `pub use a::b::{X, Y}` / `pub use a::X`:
/// item name -> the path it comes from (`module` is the module's own path).
fn reexports(code: &str, module: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in code.split(';') {
        let line = line.trim();
        let Some(rest) = line
            .strip_prefix("pub use ")
            .or_else(|| line.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let mut expanded = Vec::new();
        expand(rest, &mut expanded);
        for path in expanded {
            let path = path.trim_start_matches("crate::");
            if let Some((from, name)) = path.rsplit_once("::") {
                out.insert(name.to_owned(), join(module, from));
            }
        }
    }
    out
}

/// The module `path` lands in: the longest known module it starts with, or
/// the module an item the root hands on comes from.
fn resolve(
    path: &str,
    known: &BTreeSet<String>,
    handed_on: &BTreeMap<String, String>,
) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    for n in (1..=parts.len()).rev() {
        let candidate = parts[..n].join("::");
        if known.contains(&candidate) {
            return Some(candidate);
        }
    }
    let first = parts.first()?;
    let from = handed_on.get(*first)?;
    resolve(from, known, &BTreeMap::new())
}

/// Every elementary cycle found by a depth-first walk, each once (rotated
/// to start at its smallest module).
fn find_cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found = BTreeSet::new();
    fn walk(
        graph: &Graph,
        node: &str,
        stack: &mut Vec<String>,
        found: &mut BTreeSet<Vec<String>>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            let min = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| *n)
                .map_or(0, |(i, _)| i);
            cycle.rotate_left(min);
            found.insert(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            walk(graph, next, stack, found, done);
        }
        stack.pop();
        done.insert(node.to_owned());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        walk(graph, node, &mut Vec::new(), &mut found, &mut done);
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_of(files: &[(&str, &str)]) -> Vec<Vec<String>> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xtask-layout-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let (cycles, _) = cycles(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        cycles
    }

    #[test]
    fn finds_a_cycle_through_the_roots_reexports_and_super() {
        let cycles = graph_of(&[
            ("lib.rs", "mod a;\nmod b;\npub use b::{Bee, Other};\n"),
            ("a/mod.rs", "mod inner;\nuse crate::Bee;\n"),
            ("a/inner.rs", "use super::super::b::x;\n"),
            (
                "b.rs",
                "// use crate::a::Ay; (a comment)\nuse crate::{a::Ay, c};\n",
            ),
        ]);
        assert_eq!(cycles, vec![vec!["a".to_owned(), "b".to_owned()]]);
    }

    #[test]
    fn a_layered_crate_has_none() {
        let cycles = graph_of(&[
            ("lib.rs", "mod top;\nmod low;\npub use low::Low;\n"),
            ("top.rs", "use crate::Low;\nuse crate::low::f;\n"),
            (
                "low.rs",
                "pub struct Low;\n#[cfg(test)]\nmod tests {\n    use crate::top::X;\n}\n",
            ),
        ]);
        assert!(cycles.is_empty(), "{cycles:?}");
    }

    #[test]
    fn a_parent_and_its_child_that_name_each_other_are_a_cycle() {
        let cycles = graph_of(&[
            ("lib.rs", "mod p;\n"),
            (
                "p/mod.rs",
                "mod c;\npub use c::Child;\npub struct Parent;\n",
            ),
            ("p/c.rs", "use super::Parent;\npub struct Child;\n"),
        ]);
        assert_eq!(cycles, vec![vec!["p".to_owned(), "p::c".to_owned()]]);
    }
}
