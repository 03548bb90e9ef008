//! critest's results, read from ginkgo's JSON report
//! (`-ginkgo.json-report`): one outcome per spec (`It`), with the first
//! line of each failure's message as its reason.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// How one spec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Skipped by `-ginkgo.skip`/`-ginkgo.focus` or by the spec itself
    /// (`Skip(...)`: a feature the host or runtime does not offer).
    Skipped(String),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub outcome: Outcome,
}

impl Spec {
    /// critest's optional features: `[Feature:...]` specs.
    pub fn optional(&self) -> bool {
        self.name.contains("[Feature:")
    }
}

/// The specs of ginkgo's JSON report at `path`.
pub fn read(path: &Path) -> Vec<Spec> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let suites: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut specs = Vec::new();
    for suite in suites.as_array().into_iter().flatten() {
        for s in suite["SpecReports"].as_array().into_iter().flatten() {
            // BeforeSuite and friends fail the run, and show as specs.
            let kind = s["LeafNodeType"].as_str().unwrap_or_default();
            if kind != "It" && matches!(s["State"].as_str(), Some("passed" | "skipped")) {
                continue;
            }
            let mut parts: Vec<&str> =
                s["ContainerHierarchyTexts"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let leaf = s["LeafNodeText"].as_str().unwrap_or_default();
            parts.push(if leaf.is_empty() { kind } else { leaf });
            let reason = first_line(s["Failure"]["Message"].as_str().unwrap_or_default());
            let outcome = match s["State"].as_str().unwrap_or_default() {
                "passed" => Outcome::Passed,
                "skipped" | "pending" => Outcome::Skipped(reason),
                state => Outcome::Failed(format!("[{state}] {reason}")),
            };
            specs.push(Spec { name: parts.join(" "), outcome });
        }
    }
    specs
}

/// The first line of a failure, with the gRPC error's description when
/// the message carries one (critest's own first line is often just "failed
/// to create PodSandbox").
fn first_line(msg: &str) -> String {
    let lines: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    // gomega's "Expected\n    <T>: a\nto equal\n    <T>: b" reads as one line.
    let joined = lines.iter().take(4).copied().collect::<Vec<_>>().join(" ");
    let first = match lines.first() {
        Some(&"Expected") => joined.as_str(),
        Some(l) => l,
        None => "",
    };
    let rpc = msg.lines().find_map(|l| l.split_once("rpc error: ").map(|(_, e)| e.trim()));
    let line = match rpc {
        Some(e) if !first.contains(e) => format!("{first}: {e}"),
        _ => first.to_owned(),
    };
    let line = line.as_str();
    let mut out: String = line.chars().take(240).collect();
    if line.chars().count() > 240 {
        out.push('…');
    }
    out
}

/// The summary printed by the harness: counts, then every failure and skip
/// with its reason. The counts are not written as `N passed, N failed`:
/// that line would be read as the whole test run's.
pub fn summary(title: &str, specs: &[Spec]) -> String {
    let count = |f: fn(&Outcome) -> bool| specs.iter().filter(|s| f(&s.outcome)).count();
    let passed = count(|o| *o == Outcome::Passed);
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    let skipped = count(|o| matches!(o, Outcome::Skipped(_)));
    let mut out = format!("== {title}: passed: {passed}; failed: {failed}; skipped: {skipped} (of {})\n", specs.len());
    for s in specs {
        if let Outcome::Failed(why) = &s.outcome {
            let opt = if s.optional() { " (optional)" } else { "" };
            let _ = writeln!(out, "FAILED{opt}: {}\n    {why}", s.name);
        }
    }
    // Specs that say why they skipped (a feature missing); those left out
    // by -ginkgo.skip/-ginkgo.focus only counted.
    let mut filtered = 0;
    for s in specs {
        match &s.outcome {
            Outcome::Skipped(why) if why.is_empty() => filtered += 1,
            Outcome::Skipped(why) => {
                let _ = writeln!(out, "skipped: {}\n    {why}", s.name);
            }
            _ => {}
        }
    }
    let _ = writeln!(out, "({filtered} more skipped by -ginkgo.skip/-ginkgo.focus or critest's own filters)");
    out
}
