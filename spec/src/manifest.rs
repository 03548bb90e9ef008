//! The appc 0.8.11 image manifest: the `manifest` file at the root of an ACI.
//! Parsed from untrusted bytes, so every field is validated and sizes capped.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::id::ImageId;
use crate::name::{AcIdentifier, AcName, NameError};

/// A manifest larger than this is rejected before parsing.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// The appc schema version written by `pod image build`.
pub const AC_VERSION: &str = "0.8.11";
const MAX_LIST: usize = 4096;
const MAX_VALUE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {size} bytes, the limit is {MAX_MANIFEST_BYTES}")]
    TooLarge { size: usize },
    #[error("manifest is not valid JSON for the appc schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest field {field}: {source}")]
    Name {
        field: String,
        #[source]
        source: NameError,
    },
    #[error("manifest field {field}: {why}")]
    Field { field: String, why: String },
}

fn field_err(field: impl Into<String>, why: impl Into<String>) -> ManifestError {
    ManifestError::Field { field: field.into(), why: why.into() }
}

/// A name/value pair (labels, annotations, environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub name: AcName,
    pub protocol: String,
    pub port: u16,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u32,
    #[serde(default, rename = "socketActivated", skip_serializing_if = "std::ops::Not::not")]
    pub socket_activated: bool,
}

fn one() -> u32 {
    1
}
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_one(n: &u32) -> bool {
    *n == 1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPoint {
    pub name: AcName,
    pub path: String,
    #[serde(default, rename = "readOnly", skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Isolator {
    pub name: String,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventHandler {
    pub name: String,
    pub exec: Vec<String>,
}

/// The default app of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    pub user: String,
    pub group: String,
    #[serde(default, rename = "supplementaryGIDs", skip_serializing_if = "Vec::is_empty")]
    pub supplementary_gids: Vec<u32>,
    #[serde(default, rename = "eventHandlers", skip_serializing_if = "Vec::is_empty")]
    pub event_handlers: Vec<EventHandler>,
    #[serde(default, rename = "workingDirectory", skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<Label>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolators: Vec<Isolator>,
    #[serde(default, rename = "mountPoints", skip_serializing_if = "Vec::is_empty")]
    pub mount_points: Vec<MountPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
}

/// A dependency on another image, by name and labels, optionally pinned by ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    #[serde(rename = "imageName")]
    pub image_name: AcIdentifier,
    #[serde(default, rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<ImageId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "acKind")]
    pub ac_kind: String,
    #[serde(rename = "acVersion")]
    pub ac_version: String,
    pub name: AcIdentifier,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<App>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
    #[serde(default, rename = "pathWhitelist", skip_serializing_if = "Vec::is_empty")]
    pub path_whitelist: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Label>,
}

const LINUX_ARCHES: &[&str] =
    &["amd64", "i386", "aarch64", "aarch64_be", "armv6l", "armv7l", "armv7b", "ppc64", "ppc64le", "s390x"];

fn check_abs_path(field: &str, p: &str) -> Result<(), ManifestError> {
    if !p.starts_with('/') {
        return Err(field_err(field, format!("path {p:?} is not absolute")));
    }
    if p.contains('\0') {
        return Err(field_err(field, "path contains a NUL byte"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(field_err(field, format!("path {p:?} contains '..'")));
    }
    if p.len() > 4096 {
        return Err(field_err(field, "path is longer than 4096 bytes"));
    }
    Ok(())
}

fn check_len<T>(field: &str, v: &[T]) -> Result<(), ManifestError> {
    if v.len() > MAX_LIST {
        return Err(field_err(field, format!("{} entries, the limit is {MAX_LIST}", v.len())));
    }
    Ok(())
}

fn check_labels(field: &str, labels: &[Label]) -> Result<(), ManifestError> {
    check_len(field, labels)?;
    let mut seen = BTreeSet::new();
    for (i, l) in labels.iter().enumerate() {
        let f = format!("{field}[{i}]");
        AcIdentifier::new(l.name.clone())
            .map_err(|source| ManifestError::Name { field: format!("{f}.name"), source })?;
        if l.value.len() > MAX_VALUE {
            return Err(field_err(format!("{f}.value"), "value longer than 64 KiB"));
        }
        if !seen.insert(l.name.as_str()) {
            return Err(field_err(f, format!("duplicate name {:?}", l.name)));
        }
    }
    Ok(())
}

impl ImageManifest {
    /// Parses and validates a manifest from untrusted bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { size: bytes.len() });
        }
        let m: Self = serde_json::from_slice(bytes)?;
        m.validate()?;
        Ok(m)
    }

    /// Serializes as pretty JSON, the form written into images.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these plain types into a Vec cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|l| l.name == name).map(|l| l.value.as_str())
    }

    /// Checks every field against the appc schema and this project's limits.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.ac_kind != "ImageManifest" {
            return Err(field_err("acKind", format!("{:?}, expected \"ImageManifest\"", self.ac_kind)));
        }
        let v = &self.ac_version;
        let core = v.split(['-', '+']).next().unwrap_or("");
        if core.split('.').count() != 3
            || !core.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(field_err("acVersion", format!("{v:?} is not a semantic version")));
        }
        check_labels("labels", &self.labels)?;
        if let Some(os) = self.label("os") {
            if !["linux", "freebsd", "darwin"].contains(&os) {
                return Err(field_err("labels.os", format!("unknown os {os:?}")));
            }
            if let (Some(arch), "linux") = (self.label("arch"), os) {
                if !LINUX_ARCHES.contains(&arch) {
                    return Err(field_err("labels.arch", format!("unknown arch {arch:?} for linux")));
                }
            }
        }
        check_labels("annotations", &self.annotations)?;
        check_len("dependencies", &self.dependencies)?;
        for (i, d) in self.dependencies.iter().enumerate() {
            // Caught here, before the image enters the store, rather than as
            // a cycle once it is there.
            if d.image_name == self.name {
                return Err(field_err(
                    format!("dependencies[{i}].imageName"),
                    format!("image {} cannot depend on itself", self.name),
                ));
            }
            check_labels(&format!("dependencies[{i}].labels"), &d.labels)?;
        }
        check_len("pathWhitelist", &self.path_whitelist)?;
        for (i, p) in self.path_whitelist.iter().enumerate() {
            check_abs_path(&format!("pathWhitelist[{i}]"), p)?;
        }
        if let Some(app) = &self.app {
            app.validate()?;
        }
        Ok(())
    }
}

impl App {
    fn validate(&self) -> Result<(), ManifestError> {
        check_len("app.exec", &self.exec)?;
        check_len("app.supplementaryGIDs", &self.supplementary_gids)?;
        check_len("app.eventHandlers", &self.event_handlers)?;
        for (i, h) in self.event_handlers.iter().enumerate() {
            let f = format!("app.eventHandlers[{i}]");
            if !["pre-start", "post-stop"].contains(&h.name.as_str()) {
                return Err(field_err(format!("{f}.name"), format!("{:?} is not pre-start or post-stop", h.name)));
            }
            check_len(&format!("{f}.exec"), &h.exec)?;
            match h.exec.first() {
                Some(first) => check_abs_path(&format!("{f}.exec[0]"), first)?,
                None => return Err(field_err(format!("{f}.exec"), "an empty command")),
            }
            if h.exec.iter().any(|a| a.contains('\0') || a.len() > MAX_VALUE) {
                return Err(field_err(format!("{f}.exec"), "an argument contains a NUL byte or exceeds 64 KiB"));
            }
        }
        if let Some(first) = self.exec.first() {
            check_abs_path("app.exec[0]", first)?;
        }
        if self.exec.iter().any(|a| a.contains('\0') || a.len() > MAX_VALUE) {
            return Err(field_err("app.exec", "an argument contains a NUL byte or exceeds 64 KiB"));
        }
        for (f, v) in [("app.user", &self.user), ("app.group", &self.group)] {
            if v.is_empty() || v.len() > 256 || v.contains(['\0', ':', '\n']) {
                return Err(field_err(f, format!("{v:?} is not a user or group name, ID or path")));
            }
        }
        if let Some(wd) = &self.working_directory {
            check_abs_path("app.workingDirectory", wd)?;
        }
        check_len("app.environment", &self.environment)?;
        for (i, e) in self.environment.iter().enumerate() {
            if e.name.is_empty() || e.name.contains(['=', '\0']) || e.value.contains('\0') || e.value.len() > MAX_VALUE
            {
                return Err(field_err(format!("app.environment[{i}]"), format!("invalid variable {:?}", e.name)));
            }
        }
        check_len("app.mountPoints", &self.mount_points)?;
        for (i, m) in self.mount_points.iter().enumerate() {
            check_abs_path(&format!("app.mountPoints[{i}].path"), &m.path)?;
            if self.mount_points[..i].iter().any(|o| o.name == m.name) {
                return Err(field_err(format!("app.mountPoints[{i}].name"), format!("duplicate name {:?}", m.name)));
            }
        }
        check_len("app.ports", &self.ports)?;
        for (i, p) in self.ports.iter().enumerate() {
            // A pod file publishes a port by name: two of one name are ambiguous.
            if self.ports[..i].iter().any(|o| o.name == p.name) {
                return Err(field_err(format!("app.ports[{i}].name"), format!("duplicate name {:?}", p.name)));
            }
            if !["tcp", "udp"].contains(&p.protocol.as_str()) {
                return Err(field_err(
                    format!("app.ports[{i}].protocol"),
                    format!("{:?} is not tcp or udp", p.protocol),
                ));
            }
            // In u64: a count near u32::MAX must not wrap past the check.
            if p.port == 0 || p.count == 0 || u64::from(p.port) + u64::from(p.count) - 1 > 65535 {
                return Err(field_err(format!("app.ports[{i}]"), "port range outside 1-65535"));
            }
        }
        check_len("app.isolators", &self.isolators)?;
        for (i, iso) in self.isolators.iter().enumerate() {
            AcIdentifier::new(iso.name.clone())
                .map_err(|source| ManifestError::Name { field: format!("app.isolators[{i}].name"), source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "acKind": "ImageManifest", "acVersion": "0.8.11",
        "name": "example.com/redis",
        "labels": [{"name":"version","value":"7.0"},{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}],
        "app": {"exec": ["/usr/bin/redis-server"], "user": "redis", "group": "redis",
                "ports": [{"name":"redis","protocol":"tcp","port":6379}],
                "isolators": [{"name":"resource/memory","value":{"limit":"1G"}}]},
        "dependencies": [{"imageName":"example.com/base","labels":[{"name":"version","value":"1"}]}],
        "pathWhitelist": ["/usr/bin/redis-server"],
        "annotations": [{"name":"authors","value":"x"}]
    }"#;

    fn parse(s: &str) -> Result<ImageManifest, ManifestError> {
        ImageManifest::parse(s.as_bytes())
    }

    #[test]
    fn good_round_trips() {
        let m = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.label("version"), Some("7.0"));
        let again = ImageManifest::parse(&m.to_json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, m);
    }

    #[test]
    fn rejects_bad_fields() {
        let cases = [
            (GOOD.replace("ImageManifest", "PodManifest"), "acKind"),
            (GOOD.replace("0.8.11", "eleven"), "acVersion"),
            (GOOD.replace("example.com/redis", "Example.com/redis"), "name"),
            (GOOD.replace("\"linux\"", "\"plan9\""), "labels.os"),
            (GOOD.replace("\"exec\": [\"/usr/bin/redis-server\"]", "\"exec\": [\"redis-server\"]"), "app.exec[0]"),
            (GOOD.replace("\"tcp\"", "\"sctp\""), "app.ports[0].protocol"),
            (
                GOOD.replace(
                    "[\"/usr/bin/redis-server\"],\n        \"annotations",
                    "[\"../etc\"],\n        \"annotations",
                ),
                "pathWhitelist[0]",
            ),
            (GOOD.replace("\"version\",\"value\":\"7.0\"", "\"os\",\"value\":\"linux\""), "labels[1]"),
        ];
        for (text, field) in cases {
            let err = parse(&text).err().unwrap_or_else(|| panic!("accepted bad {field}"));
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    /// `port + count - 1` overflowed u32: a panic with overflow checks, and
    /// without them port 2 with count 2^32-1 wrapped to 0 and was accepted.
    #[test]
    fn rejects_port_count_overflow() {
        for (port, count) in [(2, u32::MAX), (1, u32::MAX), (65535, 2), (60000, 5537)] {
            let text = GOOD.replace("\"port\":6379", &format!("\"port\":{port},\"count\":{count}"));
            let err = parse(&text).err().unwrap_or_else(|| panic!("accepted port {port} count {count}"));
            assert!(err.to_string().contains("port range outside 1-65535"), "{err}");
        }
        let text = GOOD.replace("\"port\":6379", "\"port\":60000,\"count\":5536");
        assert!(parse(&text).is_ok(), "60000 + 5536 ports end at 65535");
    }

    #[test]
    fn rejects_self_dependency_duplicates_and_unbounded_lists() {
        let cases = [
            (GOOD.replace("\"imageName\":\"example.com/base\"", "\"imageName\":\"example.com/redis\""), "dependencies[0].imageName"),
            (
                GOOD.replace(
                    "[{\"name\":\"redis\",\"protocol\":\"tcp\",\"port\":6379}]",
                    "[{\"name\":\"redis\",\"protocol\":\"tcp\",\"port\":6379},{\"name\":\"redis\",\"protocol\":\"udp\",\"port\":6379}]",
                ),
                "app.ports[1].name",
            ),
            (
                GOOD.replace("\"user\": \"redis\"", &format!("\"supplementaryGIDs\": [{}], \"user\": \"redis\"", vec!["1"; MAX_LIST + 1].join(","))),
                "app.supplementaryGIDs",
            ),
            (
                GOOD.replace("\"user\": \"redis\"", "\"eventHandlers\": [{\"name\":\"pre-start\",\"exec\":[\"rm\"]}], \"user\": \"redis\""),
                "app.eventHandlers[0].exec[0]",
            ),
            (GOOD.replace("resource/memory", "Resource Memory"), "app.isolators[0].name"),
        ];
        for (text, field) in cases {
            let err = parse(&text).err().unwrap_or_else(|| panic!("accepted bad {field}"));
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn rejects_oversized_and_malformed() {
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_MANIFEST_BYTES));
        assert!(matches!(parse(&big), Err(ManifestError::TooLarge { .. })));
        assert!(matches!(parse("{\"acKind\":"), Err(ManifestError::Json(_))));
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
    }
}
