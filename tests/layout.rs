//! The layout rules of `src/` (see the Layout section of `src/lib.rs`), checked by
//! reading the source: no import circle between any two files; `wire/` and `routing/`
//! import nothing of fanfare but each other; `hub/` never imports `transport/`, `edge/`
//! or `admin/`; `transport/` never imports `edge/`; no file under `src/` above 500
//! lines. Test modules (`#[cfg(test)] mod tests`) are left out: they may import
//! whatever they test with.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, as a path relative to the crate root.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/hub/mod.rs` -> `["hub"]`, `src/hub/topic.rs` ->
/// `["hub", "topic"]`, `src/lib.rs` -> `[]`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root.join("src")).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its trailing test module.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = line.split(" // ").next().unwrap_or(line);
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&head, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&head, &inner[start..], out);
    } else if !tree.is_empty() {
        out.push(format!("{prefix}{tree}"));
    }
}

/// Every path the code names that starts at `crate`, `super`, `self` or a child module.
fn paths_in(code: &str, children: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    // `use` trees, which may span lines.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        let tail = &rest[i + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        if before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ';') {
            expand("", &tail[..end].replace(['\n', ' '], ""), &mut out);
        }
        rest = &tail[end.min(tail.len())..];
    }
    // Inline paths.
    let bytes = code.as_bytes();
    let starts: Vec<&str> = ["crate", "super", "self"]
        .into_iter()
        .chain(children.iter().map(String::as_str))
        .collect();
    for s in starts {
        let pat = format!("{s}::");
        let mut from = 0;
        while let Some(i) = code[from..].find(&pat) {
            let at = from + i;
            let ok = at == 0
                || !(bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':');
            if ok {
                let end = code[at..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .map_or(code.len(), |e| at + e);
                out.push(code[at..end].trim_end_matches(':').to_string());
            }
            from = at + pat.len();
        }
    }
    out
}

/// The file a path names, as a module path (the longest prefix that is a file).
fn resolve(
    from: &[String],
    path: &str,
    modules: &BTreeSet<Vec<String>>,
    children: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first().copied() {
        Some("crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some("super") => {
            let mut b = from.to_vec();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        Some("self") => {
            segs.remove(0);
            from.to_vec()
        }
        Some(first) if children.contains(first) => from.to_vec(),
        _ => return None,
    };
    let mut best = base.clone();
    for s in segs {
        base.push(s.to_string());
        if modules.contains(&base) {
            best = base.clone();
        } else {
            break;
        }
    }
    Some(best)
}

#[test]
fn the_layout_rules_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(root, f)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines = text.lines().count();
        if lines > 500 {
            problems.push(format!(
                "{} has {lines} lines (at most 500)",
                file.display()
            ));
        }
        let module = module_of(root, file);
        if module.first().is_some_and(|m| m == "bin") {
            continue;
        }
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(&module))
            .map(|m| m.last().unwrap().clone())
            .collect();
        let code = code_of(&text);
        for path in paths_in(&code, &children) {
            if let Some(target) = resolve(&module, &path, &modules, &children)
                && target != module
                && !target.is_empty()
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    let top = |m: &Vec<String>| m.first().cloned().unwrap_or_default();
    for (from, tos) in &edges {
        for to in tos {
            let (f, t) = (top(from), top(to));
            let bad = match f.as_str() {
                "wire" | "routing" => !(t == "wire" || t == "routing"),
                "hub" => ["transport", "edge", "admin"].contains(&t.as_str()),
                "transport" => t == "edge",
                _ => false,
            };
            if bad {
                problems.push(format!("{} imports {}", from.join("/"), to.join("/")));
            }
        }
    }
    // Circles: a path back from any file to itself.
    for start in edges.keys() {
        let mut stack: Vec<(Vec<String>, Vec<Vec<String>>)> =
            vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, trail)) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if next == start {
                    let mut t: Vec<String> = trail.iter().map(|m| m.join("/")).collect();
                    t.push(start.join("/"));
                    problems.push(format!("import circle: {}", t.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "layout rules broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_use_trees_and_inline_paths() {
    let children: BTreeSet<String> = ["upstream".to_string()].into();
    let code = "use super::{a::B, c::{D, e}};\nfn f() { crate::hub::Hub::new(); upstream::X; }\n";
    let got = paths_in(code, &children);
    for want in [
        "super::a::B",
        "super::c::D",
        "super::c::e",
        "crate::hub::Hub::new",
        "upstream::X",
    ] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
    }
    let modules: BTreeSet<Vec<String>> = [
        vec!["hub".to_string()],
        vec!["hub".to_string(), "topic".to_string()],
    ]
    .into();
    let from = vec!["hub".to_string(), "topic".to_string()];
    assert_eq!(
        resolve(&from, "super::Hub", &modules, &BTreeSet::new()),
        Some(vec!["hub".to_string()])
    );
    assert_eq!(
        resolve(&[], "crate::hub::topic::Topic", &modules, &BTreeSet::new()),
        Some(from.clone())
    );
}
