//! The layering of the library (ARCHITECTURE.md, Layers): read from the source, the modules of
//! `src/` import each other without a cycle, and only the binary imports the command line.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it names as `crate::<module>` in code (comments are
/// skipped; a module's own submodules are not edges).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" {
            continue;
        }
        let mut files = Vec::new();
        collect_rs(&path, &mut files);
        let deps = graph.entry(name.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
                let code = line.split(" //").next().unwrap_or(line);
                for (i, _) in code.match_indices("crate::") {
                    let rest = &code[i + "crate::".len()..];
                    let target: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !target.is_empty() && target != name {
                        deps.insert(target);
                    }
                }
                if code.contains("ftirflow::cli") {
                    deps.insert("cli".into());
                }
            }
        }
    }
    graph
}

fn collect_rs(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap().filter_map(Result::ok) {
            collect_rs(&e.path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// A cycle of `graph`, if it has one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_each_other_without_a_cycle_and_only_the_binary_uses_cli() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for (m, deps) in &graph {
        eprintln!("{m}: {}", deps.iter().cloned().collect::<Vec<_>>().join(" "));
    }
    assert!(graph.len() > 10 && graph["run"].contains("dataflow"), "the scan found the modules: {graph:?}");
    let users: Vec<&String> = graph.iter().filter(|(m, d)| d.contains("cli") && m.as_str() != "main").map(|(m, _)| m).collect();
    assert!(users.is_empty(), "only main.rs may import cli, but {users:?} do");
    assert_eq!(find_cycle(&graph), None, "modules that import each other");
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("run".into()).or_default().insert("dataflow".into());
    g.entry("dataflow".into()).or_default().insert("job".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("job".into()).or_default().insert("run".into());
    assert_eq!(find_cycle(&g).map(|c| c.len()), Some(4));
}
