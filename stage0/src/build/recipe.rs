//! The build recipe: its YAML schema, parsing with file/line/field errors, and
//! its translation into an appc image manifest.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use spec::manifest::{EventHandler, Isolator, MountPoint, Port, AC_VERSION};
use spec::{AcIdentifier, AcName, App, Dependency, ImageId, ImageManifest, Label};

use super::debian::DebName;
use super::BuildError;

/// A parsed recipe. Field meanings are documented on the `build` module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Recipe {
    #[serde(deserialize_with = "identifier")]
    pub name: AcIdentifier,
    #[serde(default)]
    pub labels: Pairs,
    #[serde(default)]
    pub app: Option<RecipeApp>,
    #[serde(default)]
    pub rootfs: RootfsSpec,
    #[serde(default)]
    pub dependencies: Vec<RecipeDependency>,
    #[serde(default)]
    pub path_whitelist: Vec<String>,
    #[serde(default)]
    pub annotations: Pairs,
    /// The recipe file, for error messages and resolving `rootfs.dir`.
    #[serde(skip)]
    pub path: PathBuf,
}

/// The `app` section: appc's app with maps where appc has name/value lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecipeApp {
    #[serde(default)]
    pub exec: Vec<String>,
    #[serde(default = "root_id")]
    pub user: String,
    #[serde(default = "root_id")]
    pub group: String,
    #[serde(default, rename = "supplementaryGIDs")]
    pub supplementary_gids: Vec<u32>,
    #[serde(default)]
    pub working_directory: Option<String>,
    #[serde(default)]
    pub environment: Pairs,
    #[serde(default)]
    pub ports: Vec<RecipePort>,
    #[serde(default)]
    pub mount_points: Vec<RecipeMountPoint>,
    #[serde(default)]
    pub isolators: Vec<RecipeIsolator>,
    #[serde(default)]
    pub event_handlers: Vec<RecipeEventHandler>,
}

/// Deserializes a scalar and converts it with `f` inside serde_yaml's own
/// scalar handling, so a conversion error is reported at the scalar with its
/// field path. (An error raised after `String::deserialize` returns gets the
/// enclosing mapping's position and path instead.)
pub(super) fn from_scalar<'de, D, T, E>(d: D, what: &'static str, f: fn(&str) -> Result<T, E>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    struct V<T, E> {
        what: &'static str,
        f: fn(&str) -> Result<T, E>,
    }
    impl<'de, T, E: fmt::Display> Visitor<'de> for V<T, E> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.what)
        }
        fn visit_str<Er: de::Error>(self, v: &str) -> Result<T, Er> {
            (self.f)(v).map_err(Er::custom)
        }
    }
    d.deserialize_str(V { what, f })
}

fn identifier<'de, D: Deserializer<'de>>(d: D) -> Result<AcIdentifier, D::Error> {
    from_scalar(d, "an appc identifier", |s| AcIdentifier::new(s))
}

fn name<'de, D: Deserializer<'de>>(d: D) -> Result<AcName, D::Error> {
    from_scalar(d, "an appc name", |s| AcName::new(s))
}

fn image_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ImageId>, D::Error> {
    from_scalar(d, "an image ID", |s| s.parse::<ImageId>().map(Some))
}

fn root_id() -> String {
    "0".to_owned()
}

fn tcp() -> String {
    "tcp".to_owned()
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecipePort {
    #[serde(deserialize_with = "name")]
    pub name: AcName,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub socket_activated: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecipeMountPoint {
    #[serde(deserialize_with = "name")]
    pub name: AcName,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeIsolator {
    pub name: String,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeEventHandler {
    pub name: String,
    pub exec: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecipeDependency {
    #[serde(deserialize_with = "identifier")]
    pub image_name: AcIdentifier,
    #[serde(default, rename = "imageID", deserialize_with = "image_id")]
    pub image_id: Option<ImageId>,
    #[serde(default)]
    pub labels: Pairs,
    #[serde(default)]
    pub size: Option<u64>,
}

/// How the root filesystem is assembled: packages first, then accounts and
/// directories, then `dir` copied over everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub packages: Vec<DebName>,
    #[serde(default)]
    pub exclude: Vec<DebName>,
    #[serde(default)]
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    #[serde(default)]
    pub dirs: Vec<DirSpec>,
}

/// A line of /etc/passwd.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: UnixName,
    pub uid: u32,
    pub gid: u32,
    #[serde(default = "slash")]
    pub home: String,
    #[serde(default = "nologin")]
    pub shell: String,
}

fn slash() -> String {
    "/".to_owned()
}

fn nologin() -> String {
    "/usr/sbin/nologin".to_owned()
}

/// A line of /etc/group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: UnixName,
    pub gid: u32,
    #[serde(default)]
    pub members: Vec<UnixName>,
}

/// An extra directory; `owner` and `group` are names or numeric IDs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    pub path: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

/// Permission bits written as an octal string ("0755"); YAML's own octal
/// (0o755) and decimal readings are avoided so `0755` means what it looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Default for Mode {
    fn default() -> Self {
        Self(0o755)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde_yaml hands an unquoted 0755 to a string visitor as written.
        from_scalar(d, "an octal mode", |s| match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o7777 => Ok(Self(m)),
            _ => Err(format!("{s:?} is not an octal mode like \"0755\"")),
        })
    }
}

/// A user or group name as shadow-utils accepts it by default.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixName(String);

impl UnixName {
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let body = s.strip_suffix('$').unwrap_or(&s);
        let ok = !body.is_empty()
            && s.len() <= 32
            && body
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_lowercase() || b == b'_' || (i > 0 && (b.is_ascii_digit() || b == b'-')));
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "{s:?} is not a user or group name (lowercase letters, digits, '_' and '-', \
                 not starting with a digit or '-', at most 32 bytes)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UnixName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_scalar(d, "a user or group name", |s| Self::new(s))
    }
}

/// A YAML mapping of strings kept in file order. Unlike a `BTreeMap` it
/// rejects duplicate keys, which serde_yaml would otherwise let the last win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pairs(pub Vec<(String, String)>);

impl Pairs {
    fn labels(&self) -> Vec<Label> {
        self.0.iter().map(|(name, value)| Label { name: name.clone(), value: value.clone() }).collect()
    }

    fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
}

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(PairsVisitor)
    }
}

/// Recipe files are small; a larger one is a mistake, not a recipe.
const MAX_RECIPE_BYTES: u64 = 1 << 20;

/// Reads and checks a recipe file. Schema errors carry the file, line, column
/// and field path; cross-field errors carry the file and field path.
pub fn parse(path: &Path) -> Result<Recipe, BuildError> {
    let read_err = |source| BuildError::ReadRecipe { path: path.to_owned(), source };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_RECIPE_BYTES {
        return Err(invalid(path, "", format!("{len} bytes, the limit is {MAX_RECIPE_BYTES}")));
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    parse_str(path, &text)
}

/// Parses recipe text; `path` is used for messages and for `rootfs.dir`.
pub fn parse_str(path: &Path, text: &str) -> Result<Recipe, BuildError> {
    let mut recipe: Recipe = serde_yaml::from_str(text).map_err(|e| {
        let at = e.location().map(|l| (l.line(), l.column()));
        let mut msg = e.to_string();
        // serde_yaml appends the location; it is moved to the front instead.
        if let Some((line, column)) = at {
            if let Some(stripped) = msg.strip_suffix(&format!(" at line {line} column {column}")) {
                msg = stripped.to_owned();
            }
        }
        BuildError::Recipe { path: path.to_owned(), at, msg }
    })?;
    recipe.path = path.to_owned();
    recipe.check()?;
    Ok(recipe)
}

/// An error in field `field` of the recipe at `path`, without a location.
pub(super) fn invalid(path: &Path, field: &str, why: impl fmt::Display) -> BuildError {
    let msg = if field.is_empty() { why.to_string() } else { format!("{field}: {why}") };
    BuildError::Recipe { path: path.to_owned(), at: None, msg }
}

/// Checks a path for a directory or passwd field inside the image.
fn check_image_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.split('/').any(|c| c == "..") || p.contains(['\0', '\n']) {
        return Err(format!("{p:?} contains '..', a NUL or a newline"));
    }
    Ok(())
}

impl Recipe {
    /// The directory to copy over the rootfs, resolved against the recipe's
    /// own directory so builds do not depend on the caller's cwd.
    pub fn rootfs_dir(&self) -> Option<PathBuf> {
        let base = self.path.parent().unwrap_or_else(|| Path::new("."));
        self.rootfs.dir.as_ref().map(|d| base.join(d))
    }

    /// Checks that span fields, which serde cannot see one at a time.
    fn check(&self) -> Result<(), BuildError> {
        let r = &self.rootfs;
        for (i, p) in r.exclude.iter().enumerate() {
            if r.packages.contains(p) {
                return Err(invalid(
                    &self.path,
                    &format!("rootfs.exclude[{i}]"),
                    format!("{p} is also in rootfs.packages"),
                ));
            }
        }
        let (mut names, mut ids) = (BTreeSet::new(), BTreeSet::new());
        for (i, u) in r.users.iter().enumerate() {
            let f = format!("rootfs.users[{i}]");
            if !names.insert(u.name.as_str()) {
                return Err(invalid(&self.path, &f, format!("duplicate user {}", u.name)));
            }
            if !ids.insert(u.uid) {
                return Err(invalid(&self.path, &f, format!("duplicate uid {}", u.uid)));
            }
            for (field, v) in [("home", &u.home), ("shell", &u.shell)] {
                check_image_path(v)
                    .and_then(|()| if v.contains(':') { Err(format!("{v:?} contains ':'")) } else { Ok(()) })
                    .map_err(|why| invalid(&self.path, &format!("{f}.{field}"), why))?;
            }
        }
        let (mut names, mut ids) = (BTreeSet::new(), BTreeSet::new());
        for (i, g) in r.groups.iter().enumerate() {
            let f = format!("rootfs.groups[{i}]");
            if !names.insert(g.name.as_str()) {
                return Err(invalid(&self.path, &f, format!("duplicate group {}", g.name)));
            }
            if !ids.insert(g.gid) {
                return Err(invalid(&self.path, &f, format!("duplicate gid {}", g.gid)));
            }
        }
        for (i, d) in r.dirs.iter().enumerate() {
            check_image_path(&d.path).map_err(|why| invalid(&self.path, &format!("rootfs.dirs[{i}].path"), why))?;
        }
        Ok(())
    }

    /// The image manifest this recipe describes; `arch` is the appc arch
    /// label added when the recipe gives none. Not yet validated.
    pub fn manifest(&self, arch: &str) -> ImageManifest {
        let mut labels = self.labels.labels();
        if !self.labels.contains("os") {
            labels.push(Label { name: "os".to_owned(), value: "linux".to_owned() });
        }
        if !self.labels.contains("arch") {
            labels.push(Label { name: "arch".to_owned(), value: arch.to_owned() });
        }
        ImageManifest {
            ac_kind: "ImageManifest".to_owned(),
            ac_version: AC_VERSION.to_owned(),
            name: self.name.clone(),
            labels,
            app: self.app.as_ref().map(RecipeApp::to_app),
            dependencies: self
                .dependencies
                .iter()
                .map(|d| Dependency {
                    image_name: d.image_name.clone(),
                    image_id: d.image_id.clone(),
                    labels: d.labels.labels(),
                    size: d.size,
                })
                .collect(),
            path_whitelist: self.path_whitelist.clone(),
            annotations: self.annotations.labels(),
        }
    }
}

impl RecipeApp {
    fn to_app(&self) -> App {
        App {
            exec: self.exec.clone(),
            user: self.user.clone(),
            group: self.group.clone(),
            supplementary_gids: self.supplementary_gids.clone(),
            event_handlers: self
                .event_handlers
                .iter()
                .map(|h| EventHandler { name: h.name.clone(), exec: h.exec.clone() })
                .collect(),
            working_directory: self.working_directory.clone(),
            environment: self.environment.labels(),
            isolators: self
                .isolators
                .iter()
                .map(|i| Isolator { name: i.name.clone(), value: i.value.clone() })
                .collect(),
            mount_points: self
                .mount_points
                .iter()
                .map(|m| MountPoint { name: m.name.clone(), path: m.path.clone(), read_only: m.read_only })
                .collect(),
            ports: self
                .ports
                .iter()
                .map(|p| Port {
                    name: p.name.clone(),
                    protocol: p.protocol.clone(),
                    port: p.port,
                    count: p.count,
                    socket_activated: p.socket_activated,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "recipe_tests.rs"]
mod tests;
