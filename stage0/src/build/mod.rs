//! `pod image build`: turns a YAML recipe into an ACI, from Debian packages
//! and/or a directory, without running any code from the packages.
//!
//! A recipe (every field but `name` is optional; unknown fields are errors):
//!
//! ```yaml
//! name: example.com/redis           # the image name (an appc AC identifier)
//! labels: { version: "7.0" }        # os=linux and arch (the host's) added unless given
//! app:                              # appc's app section, with maps for name/value lists
//!   exec: [/usr/bin/redis-server, --protected-mode, "no"]
//!   user: redis                     # name, numeric ID or path; default "0"
//!   group: redis                    # default "0"
//!   supplementaryGIDs: [5]
//!   workingDirectory: /data
//!   environment: { FOO: bar }
//!   ports: [{ name: redis, port: 6379, protocol: tcp }]   # protocol defaults to tcp; count, socketActivated
//!   mountPoints: [{ name: data, path: /data }]             # readOnly
//!   isolators: [{ name: resource/memory, value: { limit: 1G } }]
//!   eventHandlers: [{ name: pre-start, exec: [/bin/prep] }]
//! rootfs:
//!   packages: [redis-server]        # Debian packages, with their Depends/PreDepends closure
//!   exclude: [adduser]              # packages to leave out of the closure
//!   users:  [{ name: redis, uid: 100, gid: 101, home: /var/lib/redis, shell: /usr/sbin/nologin }]
//!   groups: [{ name: redis, gid: 101, members: [] }]
//!   dirs:   [{ path: /data, mode: "0755", owner: redis, group: redis }]
//!   dir: files/                     # relative to the recipe file; copied in last, so it wins
//! dependencies: [{ imageName: example.com/base, labels: { version: "1" } }]  # imageID, size
//! pathWhitelist: []
//! annotations: { authors: "..." }
//! ```
//!
//! The rootfs is assembled in this order: packages unpacked with `dpkg -x` in
//! name order (maintainer scripts do not run); /etc/passwd and /etc/group
//! written with root, nobody/nogroup, what packages shipped and the recipe's
//! accounts (home defaults to /, shell to /usr/sbin/nologin); /tmp made 1777;
//! /bin/sh linked to busybox if busybox is present and /bin/sh is not; `dirs`
//! created (mode defaults to 0755, the group to the owner's primary group);
//! `dir` copied over everything. Without `dependencies`, a named app user or
//! group must then exist in the image.
//!
//! Everything is staged in a temporary directory removed on any error, and
//! the image is written to `OUT.tmp` and renamed to `OUT` once complete.

mod debian;
mod recipe;
mod rootfs;
mod scratch;

use std::ffi::OsString;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use spec::{ImageId, ImageManifest, ManifestError};
use tracing::info;

use crate::archive::{pack_aci, ArchiveError, Compression};
use crate::exit::{Exit, ExitCodeOf};

pub use debian::{DebName, Package};
pub use recipe::{
    DirSpec, GroupSpec, Mode, Pairs, Recipe, RecipeApp, RecipeDependency, RecipeEventHandler, RecipeIsolator,
    RecipeMountPoint, RecipePort, RootfsSpec, UnixName, UserSpec,
};

/// Where downloaded `.deb` files are kept between builds.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/pod/debs";

/// How to build; the recipe says what.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The `.deb` cache; files in it are reused when their SHA-256 matches
    /// apt's lists.
    pub cache_dir: PathBuf,
    pub compression: Compression,
    /// Where the staging directory is created (it needs room for the whole
    /// unpacked image); `None` for the system temp dir.
    pub staging_parent: Option<PathBuf>,
    /// When set, timestamps later than this (seconds since the epoch) are
    /// clamped to it, so rebuilding the same recipe from the same packages
    /// and files gives the same image ID.
    pub source_date_epoch: Option<u64>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            compression: Compression::default(),
            staging_parent: None,
            source_date_epoch: None,
        }
    }
}

/// What a successful build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub id: ImageId,
    pub manifest: ImageManifest,
    /// The Debian packages unpacked, sorted by name.
    pub packages: Vec<Package>,
    /// Size in bytes of the written (compressed) image file.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("reading recipe {}: {source}", .path.display())]
    ReadRecipe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The recipe is wrong; `msg` starts with the field path.
    #[error("{}: {}{msg}", .path.display(), fmt_at(*.at))]
    Recipe { path: PathBuf, at: Option<(usize, usize)>, msg: String },
    #[error("{}: {source}", .path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("package {name} not found in apt's lists (is it spelled right? has apt-get update run?)")]
    PackageNotFound { name: String },
    #[error("package {name} is purely virtual: name one of the packages that provide it")]
    VirtualPackage { name: String },
    #[error("cannot satisfy {package}'s dependency on {dependency}")]
    Unsatisfiable { package: String, dependency: String },
    #[error("running {program}: {source}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Tool { command: String, status: ExitStatus, stderr: String },
    #[error("unexpected output from {command}: {why}")]
    AptOutput { command: String, why: String },
    #[error("{}: SHA-256 is {actual}, apt's lists say {expected}", .path.display())]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the image: {0}")]
    Archive(#[from] ArchiveError),
}

fn fmt_at(at: Option<(usize, usize)>) -> String {
    at.map(|(line, column)| format!("line {line} column {column}: ")).unwrap_or_default()
}

/// Wraps an I/O error with the operation and path it failed on.
pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Io { op, path, source }
}

impl ExitCodeOf for BuildError {
    fn exit(&self) -> Exit {
        match self {
            Self::ReadRecipe { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Exit::NotFound,
            Self::Recipe { .. } | Self::Manifest { .. } | Self::VirtualPackage { .. } => Exit::InvalidInput,
            Self::PackageNotFound { .. } => Exit::NotFound,
            Self::Archive(e) => e.exit(),
            Self::ReadRecipe { .. }
            | Self::Unsatisfiable { .. }
            | Self::Spawn { .. }
            | Self::Tool { .. }
            | Self::AptOutput { .. }
            | Self::Checksum { .. }
            | Self::Io { .. } => Exit::Failure,
        }
    }
}

/// Reads and checks a recipe (schema and cross-field rules; the manifest is
/// validated by `build`).
pub fn parse_recipe(path: &Path) -> Result<Recipe, BuildError> {
    recipe::parse(path)
}

/// The appc `arch` label of the machine this binary was built for, which is
/// the one apt downloads packages for.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "i386",
        "aarch64" if cfg!(target_endian = "big") => "aarch64_be",
        "arm" => "armv7l",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        other => other,
    }
}

/// Builds the image `recipe_path` describes and writes it to `out`.
pub fn build(recipe_path: &Path, out: &Path, opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let recipe = parse_recipe(recipe_path)?;
    let manifest = recipe.manifest(host_arch());
    manifest.validate().map_err(|source| BuildError::Manifest { path: recipe_path.to_owned(), source })?;
    info!(name = %manifest.name, recipe = %recipe_path.display(), "building");

    // Dropping it on any early return removes the staging tree; after a
    // kill -9, the next build does.
    let staging = scratch::Scratch::new(&opts.staging_parent.clone().unwrap_or_else(std::env::temp_dir))?;
    let rootfs = staging.path().join("rootfs");
    fs::create_dir(&rootfs).map_err(io_err("creating", &rootfs))?;
    // The rootfs root becomes the image's "/": 0755 whatever the umask.
    fs::set_permissions(&rootfs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io_err("chmod", &rootfs))?;

    let packages = if recipe.rootfs.packages.is_empty() {
        Vec::new()
    } else {
        debian::install(&recipe.rootfs.packages, &recipe.rootfs.exclude, &opts.cache_dir, &rootfs)?
    };
    rootfs::finish(&recipe, &rootfs, opts.source_date_epoch)?;
    crate::crashpoint::crashpoint("build.staged");

    let (id, size) = write_image(&manifest, &rootfs, out, opts.compression)?;
    info!(id = %id, size, out = %out.display(), packages = packages.len(), "built");
    Ok(BuildReport { id, manifest, packages, size })
}

/// Packs into `OUT.tmp` and renames it to `out` only when complete, so a
/// failed build leaves no half-written image under the real name.
fn write_image(
    manifest: &ImageManifest,
    rootfs: &Path,
    out: &Path,
    compression: Compression,
) -> Result<(ImageId, u64), BuildError> {
    let mut tmp_name = OsString::from(out.as_os_str());
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let file = fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
        let mut w = BufWriter::new(file);
        let id = pack_aci(manifest, rootfs, &mut w, compression)?;
        let file = w.into_inner().map_err(|e| io_err("writing", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        let size = file.metadata().map_err(io_err("inspecting", &tmp))?.len();
        crate::crashpoint::crashpoint("build.packed");
        fs::rename(&tmp, out).map_err(io_err("renaming to", out))?;
        Ok((id, size))
    })();
    if result.is_err() {
        // Best effort: the error being returned matters more than this one.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{extract_aci, Limits};
    use std::process::Command;

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn errors_map_to_documented_exit_codes() {
        let dir = tempdir();
        let missing = parse_recipe(&dir.path().join("nope.yaml")).err();
        assert_eq!(missing.map(|e| e.exit()), Some(Exit::NotFound));
        let bad = recipe::parse_str(Path::new("r.yaml"), "name: x\nbogus: 1\n").err();
        assert_eq!(bad.map(|e| e.exit()), Some(Exit::InvalidInput));
        assert_eq!(BuildError::PackageNotFound { name: "x".into() }.exit(), Exit::NotFound);
        let tool = Command::new("false").status().unwrap_or_else(|e| panic!("{e}"));
        let e = BuildError::Tool { command: "dpkg -x".into(), status: tool, stderr: String::new() };
        assert_eq!(e.exit(), Exit::Failure);
    }

    #[test]
    fn a_bad_recipe_writes_nothing() {
        let dir = tempdir();
        let (recipe, out) = (dir.path().join("recipe.yaml"), dir.path().join("x.aci"));
        fs::write(&recipe, "name: example.com/x\napp: {exec: [sh]}\n").unwrap_or_else(|e| panic!("{e}"));
        let e = build(&recipe, &out, &BuildOptions::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with(&format!("{}: manifest field app.exec[0]", recipe.display())), "{e}");
        assert!(!out.exists() && !dir.path().join("x.aci.tmp").exists());
    }

    /// Packs a directory-only recipe and reads it back.
    #[test]
    fn builds_from_a_directory() {
        let dir = tempdir();
        fs::create_dir_all(dir.path().join("files/etc")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.path().join("files/etc/motd"), "hi\n").unwrap_or_else(|e| panic!("{e}"));
        let recipe = dir.path().join("recipe.yaml");
        fs::write(&recipe, "name: example.com/files\nrootfs: {dir: files}\n").unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("files.aci");
        let opts = BuildOptions { source_date_epoch: Some(1_700_000_000), ..BuildOptions::default() };
        let report = build(&recipe, &out, &opts).unwrap_or_else(|e| panic!("{e}"));
        assert!(report.packages.is_empty());
        assert_eq!(report.size, fs::metadata(&out).map(|m| m.len()).unwrap_or(0));
        let again = build(&recipe, &out, &opts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.id, report.id, "same recipe, same files, same epoch: same image");
        let x = tempdir();
        let file = fs::File::open(&out).unwrap_or_else(|e| panic!("{e}"));
        let got = extract_aci(file, x.path(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((got.id, got.manifest.label("arch")), (report.id, Some(host_arch())));
        let motd = fs::read_to_string(x.path().join("rootfs/etc/motd")).unwrap_or_default();
        assert_eq!(motd, "hi\n");
        assert!(x.path().join("rootfs/etc/passwd").is_file());
    }

    /// Tier b: needs apt-get and Debian's archive. Builds the example recipe
    /// shipped in manifests/images/.
    #[test]
    fn builds_busybox_from_debian() {
        let cache = tempdir();
        // Downloading into the cache first doubles as the probe and as a test
        // that the build reuses a cached .deb.
        let probe = Command::new("apt-get")
            .args(["download", "-q", "busybox-static"])
            .current_dir(cache.path())
            .env("LC_ALL", "C")
            .output();
        match probe {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr);
                eprintln!("SKIP: builds_busybox_from_debian: apt-get download busybox-static failed: {}", why.trim());
                return;
            }
            Err(e) => {
                eprintln!("SKIP: builds_busybox_from_debian: cannot run apt-get: {e}");
                return;
            }
        }
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/images/busybox.yaml");
        let dir = tempdir();
        let out = dir.path().join("busybox.aci");
        let opts = BuildOptions { cache_dir: cache.path().to_owned(), ..BuildOptions::default() };
        let report = build(&recipe, &out, &opts).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = report.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["busybox-static"]);
        assert_eq!(report.manifest.name.as_str(), "example.com/busybox");
        assert!(!dir.path().join("busybox.aci.tmp").exists());
        let x = tempdir();
        let file = fs::File::open(&out).unwrap_or_else(|e| panic!("{e}"));
        let got = extract_aci(file, x.path(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.id, report.id);
        let rootfs = x.path().join("rootfs");
        assert!(rootfs.join("bin/busybox").is_file(), "no /bin/busybox");
        assert_eq!(fs::read_link(rootfs.join("bin/sh")).ok(), Some(PathBuf::from("busybox")));
        assert!(fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default().starts_with("root:x:0:0:"));
    }
}
