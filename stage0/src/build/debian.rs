//! Debian packages for `pod image build`: the dependency closure from
//! `apt-cache depends`, `.deb` files fetched with `apt-get download` into a
//! checksum-verified cache, unpacked with `dpkg -x`. Every tool gets its
//! arguments as argv, never through a shell.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use super::{io_err, BuildError};

/// A Debian package name as policy §5.6.1 allows: lowercase letters, digits,
/// '+', '-' and '.', at least two characters, starting alphanumeric. This is
/// what keeps recipe text from reaching apt as an option or a pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DebName(String);

impl DebName {
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let b = s.as_bytes();
        let ok = b.len() >= 2
            && b.len() <= 128
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(&c));
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "invalid Debian package name {s:?}: lowercase letters, digits, '+', '-' and '.', \
                 at least two characters, starting with a letter or digit"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DebName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DebName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::recipe::from_scalar(d, "a Debian package name", |s| Self::new(s))
    }
}

/// A package that went into an image: apt's candidate version of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// SHA-256 of the `.deb` from apt's (signed) lists; cached files are checked against it.
    pub sha256: String,
}

impl Package {
    /// The file name `apt-get download` gives this package: the epoch's ':'
    /// is URL-encoded.
    fn deb_file_name(&self) -> String {
        format!("{}_{}_{}.deb", self.name, self.version.replace(':', "%3a"), self.architecture)
    }
}

/// Resolves, fetches and unpacks `roots` and their dependencies (minus
/// `exclude`) into `rootfs`. Returns the packages, sorted by name.
pub(super) fn install(
    roots: &[DebName],
    exclude: &[DebName],
    cache_dir: &Path,
    rootfs: &Path,
) -> Result<Vec<Package>, BuildError> {
    let out = run(Tool::AptCache, depends_args(roots))?;
    let closure = closure(&parse_depends(&out), roots, exclude)?;
    info!(requested = roots.len(), packages = closure.len(), "resolved the package closure");
    let show = run(Tool::AptCache, show_args(&closure))?;
    let packages = parse_show(&show, &closure)?;
    let debs = fetch(&packages, cache_dir)?;
    info!(packages = debs.len(), rootfs = %rootfs.display(), "unpacking");
    // `packages` is sorted by name, so files several packages ship end up the
    // same on every build.
    for deb in &debs {
        run(Tool::Dpkg, vec!["-x".into(), deb.into(), rootfs.into()])?;
    }
    Ok(packages)
}

/// The programs this module runs, found on `PATH`.
#[derive(Debug, Clone, Copy)]
enum Tool {
    AptCache,
    AptGet,
    Dpkg,
}

impl Tool {
    fn program(self) -> &'static str {
        match self {
            Tool::AptCache => "apt-cache",
            Tool::AptGet => "apt-get",
            Tool::Dpkg => "dpkg",
        }
    }
}

fn depends_args(roots: &[DebName]) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.extend(roots.iter().map(|r| OsString::from(r.as_str())));
    args
}

fn show_args(closure: &[String]) -> Vec<OsString> {
    let mut args = vec![OsString::from("show"), OsString::from("--no-all-versions")];
    args.extend(closure.iter().map(OsString::from));
    args
}

fn download_args(packages: &[&Package]) -> Vec<OsString> {
    let mut args = vec![OsString::from("download"), OsString::from("-q")];
    // Pinning the version makes the file the one whose hash `show` reported.
    args.extend(packages.iter().map(|p| OsString::from(format!("{}={}", p.name, p.version))));
    args
}

/// Runs `tool` in `cwd` (or ours) and returns its stdout, or an error with
/// its stderr. apt's "No packages found" (exit 100 when no name matched) is
/// returned as empty output so the caller names the missing package.
fn run_in(tool: Tool, args: Vec<OsString>, cwd: Option<&Path>) -> Result<String, BuildError> {
    let mut cmd = Command::new(tool.program());
    // A fixed locale keeps apt's messages in the form matched here.
    cmd.args(&args).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    debug!(program = tool.program(), args = args.len(), "running");
    let out = cmd.output().map_err(|source| BuildError::Spawn { program: tool.program(), source })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if matches!(tool, Tool::AptCache) && stderr.contains("No packages found") {
            return Ok(String::new());
        }
        let mut command = tool.program().to_owned();
        for a in args.iter().take(4) {
            command.push(' ');
            command.push_str(&a.to_string_lossy());
        }
        if args.len() > 4 {
            command.push_str(" ...");
        }
        return Err(BuildError::Tool { command, status: out.status, stderr: stderr.trim().to_owned() });
    }
    String::from_utf8(out.stdout).map_err(|_| BuildError::AptOutput {
        command: tool.program().to_owned(),
        why: "output is not UTF-8".to_owned(),
    })
}

fn run(tool: Tool, args: Vec<OsString>) -> Result<String, BuildError> {
    run_in(tool, args, None)
}

/// One alternative of a dependency: a real package, or a virtual one with
/// the real packages that provide it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Alt {
    Real(String),
    Virtual { name: String, providers: Vec<String> },
}

/// `apt-cache depends --recurse` output: each real package's dependencies,
/// each dependency a list of alternatives (`a | b`).
#[derive(Debug, Default)]
struct DepGraph {
    real: BTreeMap<String, Vec<Vec<Alt>>>,
    virtuals: BTreeSet<String>,
}

/// A name as apt prints it, without the `:any` multiarch qualifier.
fn bare(name: &str) -> String {
    name.strip_suffix(":any").unwrap_or(name).to_owned()
}

/// Parses `apt-cache depends` output. Package lines start in column 0
/// (`<name>` when purely virtual); dependency lines are `  Kind: name`, with
/// `|` in column 1 when the next line is an alternative; lines indented four
/// spaces list the providers of the dependency above them.
fn parse_depends(text: &str) -> DepGraph {
    let mut g = DepGraph::default();
    let mut current: Option<String> = None;
    // Whether the last dependency line ended with '|', and whether it is one
    // we follow (Depends/PreDepends), so its provider lines are kept.
    let (mut or_next, mut following) = (false, false);
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            let name = line.trim();
            (current, or_next, following) = (None, false, false);
            if let Some(v) = name.strip_prefix('<').and_then(|n| n.strip_suffix('>')) {
                g.virtuals.insert(bare(v));
            } else {
                g.real.entry(bare(name)).or_default();
                current = Some(bare(name));
            }
            continue;
        }
        let Some(deps) = current.as_ref().and_then(|c| g.real.get_mut(c)) else { continue };
        if let Some(provider) = line.strip_prefix("    ") {
            if let (true, Some(Alt::Virtual { providers, .. })) =
                (following, deps.last_mut().and_then(|grp| grp.last_mut()))
            {
                providers.push(bare(provider.trim()));
            }
            continue;
        }
        let Some((kind, target)) = line.get(2..).and_then(|l| l.split_once(": ")) else { continue };
        following = matches!(kind, "Depends" | "PreDepends");
        let continues = or_next;
        or_next = line.as_bytes().get(1) == Some(&b'|');
        if !following {
            continue;
        }
        let alt = match target.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
            Some(name) => Alt::Virtual { name: bare(name), providers: Vec::new() },
            None => Alt::Real(bare(target)),
        };
        match deps.last_mut() {
            Some(group) if continues => group.push(alt),
            _ => deps.push(vec![alt]),
        }
    }
    g
}

/// Walks the graph from `roots`, choosing for each dependency the first
/// alternative not excluded (a package already chosen wins; a virtual one
/// is met by its first provider apt lists). Returns sorted names.
fn closure(g: &DepGraph, roots: &[DebName], exclude: &[DebName]) -> Result<Vec<String>, BuildError> {
    let excluded: BTreeSet<&str> = exclude.iter().map(DebName::as_str).collect();
    for r in roots {
        if !g.real.contains_key(r.as_str()) {
            let name = r.to_string();
            return Err(if g.virtuals.contains(&name) {
                BuildError::VirtualPackage { name }
            } else {
                BuildError::PackageNotFound { name }
            });
        }
    }
    let mut chosen = BTreeSet::new();
    let mut queue: VecDeque<String> = roots.iter().map(ToString::to_string).collect();
    while let Some(pkg) = queue.pop_front() {
        if !chosen.insert(pkg.clone()) {
            continue;
        }
        let Some(groups) = g.real.get(&pkg) else {
            return Err(BuildError::PackageNotFound { name: pkg });
        };
        for group in groups {
            let all: Vec<&String> = group
                .iter()
                .flat_map(|alt| match alt {
                    Alt::Real(n) => std::slice::from_ref(n),
                    Alt::Virtual { providers, .. } => providers.as_slice(),
                })
                .collect();
            let allowed: Vec<&String> = all.iter().copied().filter(|n| !excluded.contains(n.as_str())).collect();
            if allowed.iter().any(|n| chosen.contains(*n) || queue.contains(*n)) {
                continue;
            }
            match allowed.iter().find(|n| g.real.contains_key(n.as_str())) {
                Some(n) => queue.push_back((*n).clone()),
                // The recipe asked for these to be left out: its call.
                None if !all.is_empty() && allowed.is_empty() => {
                    debug!(package = %pkg, "dependency left out by rootfs.exclude");
                }
                None => {
                    let dependency = group
                        .iter()
                        .map(|alt| match alt {
                            Alt::Real(n) => n.clone(),
                            Alt::Virtual { name, .. } => format!("<{name}>"),
                        })
                        .collect::<Vec<_>>()
                        .join(" | ");
                    return Err(BuildError::Unsatisfiable { package: pkg, dependency });
                }
            }
        }
    }
    Ok(chosen.into_iter().collect())
}

/// Parses `apt-cache show --no-all-versions` stanzas for the `wanted` names.
fn parse_show(text: &str, wanted: &[String]) -> Result<Vec<Package>, BuildError> {
    let mut found: BTreeMap<String, Package> = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_owned()))
        };
        let (Some(name), Some(version), Some(architecture), Some(sha256)) =
            (field("Package"), field("Version"), field("Architecture"), field("SHA256"))
        else {
            continue;
        };
        // Names and versions become file names: refuse anything odd.
        let sane = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.:~_".contains(&b));
        if !(sane(&name) && sane(&version) && sane(&architecture)) || sha256.len() != 64 {
            return Err(BuildError::AptOutput {
                command: "apt-cache show".to_owned(),
                why: format!("odd stanza for {name:?}"),
            });
        }
        found.entry(name.clone()).or_insert(Package { name, version, architecture, sha256 });
    }
    wanted.iter().map(|w| found.remove(w).ok_or_else(|| BuildError::PackageNotFound { name: w.clone() })).collect()
}

fn sha256_file(path: &Path) -> Result<String, BuildError> {
    let mut f = fs::File::open(path).map_err(io_err("opening", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Makes every package's `.deb` present in `cache_dir`, downloading what is
/// missing or fails its checksum. Downloads land in a temp dir inside the
/// cache and are renamed in only once verified, so concurrent builds and
/// interrupted downloads never leave a bad file under a good name.
fn fetch(packages: &[Package], cache_dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    fs::create_dir_all(cache_dir).map_err(io_err("creating", cache_dir))?;
    let mut missing = Vec::new();
    for p in packages {
        let path = cache_dir.join(p.deb_file_name());
        if path.is_file() && sha256_file(&path)? == p.sha256 {
            continue;
        }
        missing.push(p);
    }
    info!(cached = packages.len() - missing.len(), downloading = missing.len(), cache = %cache_dir.display(), "fetching packages");
    if !missing.is_empty() {
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(cache_dir)
            .map_err(io_err("creating a temp dir in", cache_dir))?;
        run_in(Tool::AptGet, download_args(&missing), Some(tmp.path()))?;
        for p in &missing {
            let name = p.deb_file_name();
            let got = tmp.path().join(&name);
            if !got.is_file() {
                return Err(BuildError::AptOutput {
                    command: "apt-get download".to_owned(),
                    why: format!("it did not write {name}"),
                });
            }
            let actual = sha256_file(&got)?;
            if actual != p.sha256 {
                return Err(BuildError::Checksum { path: got, expected: p.sha256.clone(), actual });
            }
            let dest = cache_dir.join(&name);
            fs::rename(&got, &dest).map_err(io_err("renaming into", &dest))?;
        }
    }
    Ok(packages.iter().map(|p| cache_dir.join(p.deb_file_name())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<DebName> {
        v.iter().map(|s| DebName::new(*s).unwrap_or_else(|e| panic!("{e}"))).collect()
    }

    #[test]
    fn package_names() {
        for ok in ["busybox-static", "libstdc++6", "python3.11", "g++", "0ad"] {
            assert!(DebName::new(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "a", "-o", "--download-only", "Foo", "a b", "a;rm", "$(id)", "a/b", "a_b", "+a", "pkg:amd64", "a=1"]
        {
            assert!(DebName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn argv_is_exact() {
        let args = depends_args(&names(&["curl", "busybox-static"]));
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[0], "depends");
        assert_eq!(args[args.len() - 2..], ["curl", "busybox-static"]);
        let p = Package {
            name: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            architecture: "amd64".into(),
            sha256: String::new(),
        };
        assert_eq!(download_args(&[&p]), ["download", "-q", "busybox-static=1:1.35.0-4"]);
        assert_eq!(p.deb_file_name(), "busybox-static_1%3a1.35.0-4_amd64.deb");
    }

    /// Abridged from bookworm's `apt-cache depends --recurse ... redis-server`.
    const REDIS: &str = "redis-server
  Depends: redis-tools
  Depends: adduser
redis-tools
  Depends: libc6
  Depends: <perl:any>
    perl
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
  Recommends: should-not-follow
 |Suggests: nope
  Suggests: <nope-either>
    nope
adduser
  Depends: passwd
init-system-helpers
 |Depends: usrmerge
  Depends: usr-is-merged
    usrmerge
libc6
  PreDepends: init-system-helpers
perl
  Depends: libc6
debconf
cdebconf
  Depends: libnewt0.52
passwd
usrmerge
  Depends: <perl:any>
    perl
usr-is-merged
libnewt0.52
should-not-follow
<perl:any>
<debconf-2.0>
";

    #[test]
    fn closure_takes_first_alternatives_and_skips_virtuals() {
        let g = parse_depends(REDIS);
        assert!(g.virtuals.contains("perl") && g.virtuals.contains("debconf-2.0"));
        let got = closure(&g, &names(&["redis-server"]), &[]).unwrap_or_else(|e| panic!("{e}"));
        let want = [
            "adduser",
            "debconf",
            "init-system-helpers",
            "libc6",
            "passwd",
            "perl",
            "redis-server",
            "redis-tools",
            "usrmerge",
        ];
        assert_eq!(got, want);
        let got = closure(&g, &names(&["redis-server"]), &names(&["adduser", "usrmerge", "debconf"]))
            .unwrap_or_else(|e| panic!("{e}"));
        let want = [
            "cdebconf",
            "init-system-helpers",
            "libc6",
            "libnewt0.52",
            "perl",
            "redis-server",
            "redis-tools",
            "usr-is-merged",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn closure_names_missing_and_virtual_roots() {
        let g = parse_depends(REDIS);
        let e = closure(&g, &names(&["redis-servr"]), &[]).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("package redis-servr not found in apt's lists (is it spelled right? has apt-get update run?)")
        );
        let g = parse_depends("<awk>\n");
        assert!(matches!(closure(&g, &names(&["awk"]), &[]), Err(BuildError::VirtualPackage { .. })));
    }

    #[test]
    fn show_stanzas() {
        let text = "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nArchitecture: amd64\nDescription: x\n continued: line\n\
                    SHA256: 3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744\n\n";
        let p = parse_show(text, &["busybox-static".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p[0].deb_file_name(), "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb");
        assert!(matches!(parse_show(text, &["curl".to_owned()]), Err(BuildError::PackageNotFound { .. })));
        let odd = text.replace("amd64", "../x");
        assert!(matches!(parse_show(&odd, &["busybox-static".to_owned()]), Err(BuildError::AptOutput { .. })));
    }
}
