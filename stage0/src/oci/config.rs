//! An OCI image config as an app: what `pod run` starts when the pod file
//! does not say otherwise, in the same terms as an ACI's app section, so
//! `prepare` treats both kinds alike.
//!
//! - `Entrypoint` + `Cmd` → exec (the pod file's `exec` replaces both, as
//!   with ACIs);
//! - `Env` → environment, `WorkingDir` → working directory;
//! - `User` (`name`, `uid`, `name:group`, `uid:gid`) → user and group, both
//!   resolved by pod-init in the image's own /etc/passwd and /etc/group; a
//!   user without a group runs with its primary group (empty `group`);
//! - `ExposedPorts` (`80/tcp`) → ports named `80-tcp`, which the pod file
//!   can also name by number;
//! - `Volumes` → mount points named after their path (`/var/lib/redis` →
//!   `var-lib-redis`);
//! - `StopSignal` is returned beside the app.

use std::collections::BTreeSet;

use oci_spec::image::ImageConfiguration;
use spec::manifest::{App, Label, MountPoint, Port};
use spec::AcName;

/// Most exposed ports or volumes taken from one config (untrusted input).
const MAX_ENTRIES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("image config: {field}: {why}")]
    Field { field: &'static str, why: String },
}

fn bad(field: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Field { field, why: why.into() }
}

/// The app of an image config, and its stop signal (`SIGQUIT`, `3`...).
pub fn to_app(config: &ImageConfiguration) -> Result<(App, Option<String>), ConfigError> {
    let empty = oci_spec::image::Config::default();
    let c = config.config().as_ref().unwrap_or(&empty);
    let mut exec: Vec<String> = c.entrypoint().clone().unwrap_or_default();
    exec.extend(c.cmd().clone().unwrap_or_default());

    let (user, group) = match c.user().as_deref().map(str::trim) {
        None | Some("") => ("0".to_owned(), "0".to_owned()),
        Some(u) => match u.split_once(':') {
            Some((user, group)) if !user.is_empty() && !group.is_empty() => (user.to_owned(), group.to_owned()),
            Some(_) => return Err(bad("User", format!("{u:?} is not user, uid, user:group or uid:gid"))),
            None => (u.to_owned(), String::new()),
        },
    };
    for (what, v) in [("user", &user), ("group", &group)] {
        if v.contains(['/', '\n', '\0']) {
            return Err(bad("User", format!("invalid {what} {v:?}")));
        }
    }

    let environment = c
        .env()
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| Label { name: k.to_owned(), value: v.to_owned() })
        .collect();

    let mut ports = Vec::new();
    let mut exposed: Vec<&String> = c.exposed_ports().iter().flatten().collect();
    if exposed.len() > MAX_ENTRIES {
        return Err(bad("ExposedPorts", format!("{} entries; the limit is {MAX_ENTRIES}", exposed.len())));
    }
    exposed.sort();
    for p in exposed {
        let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
        let proto = proto.to_ascii_lowercase();
        if !matches!(proto.as_str(), "tcp" | "udp") {
            // sctp and others: nothing in pod publishes them.
            tracing::debug!(port = %p, "exposed port of another protocol ignored");
            continue;
        }
        let port: u16 =
            num.parse().ok().filter(|n| *n > 0).ok_or_else(|| bad("ExposedPorts", format!("{p:?} is not a port")))?;
        let name = AcName::new(format!("{port}-{proto}")).map_err(|e| bad("ExposedPorts", e.to_string()))?;
        ports.push(Port { name, protocol: proto, port, count: 1, socket_activated: false });
    }

    let mut mount_points = Vec::new();
    let mut names = BTreeSet::new();
    let mut volumes: Vec<&String> = c.volumes().iter().flatten().collect();
    if volumes.len() > MAX_ENTRIES {
        return Err(bad("Volumes", format!("{} entries; the limit is {MAX_ENTRIES}", volumes.len())));
    }
    volumes.sort();
    for v in volumes {
        if !v.starts_with('/') || v.split('/').any(|c| c == "..") {
            return Err(bad("Volumes", format!("{v:?} is not an absolute path")));
        }
        let base = volume_name(v);
        let mut name = base.clone();
        let mut n = 1;
        while !names.insert(name.clone()) {
            n += 1;
            name = format!("{base}-{n}");
        }
        let name = AcName::new(name).map_err(|e| bad("Volumes", e.to_string()))?;
        mount_points.push(MountPoint { name, path: v.trim_end_matches('/').to_owned(), read_only: false });
    }

    let working_directory = c.working_dir().clone().filter(|w| !w.is_empty());
    if let Some(w) = &working_directory {
        if !w.starts_with('/') {
            return Err(bad("WorkingDir", format!("{w:?} is not an absolute path")));
        }
    }
    let stop_signal = c.stop_signal().clone().filter(|s| !s.is_empty());
    let app = App {
        exec,
        user,
        group,
        supplementary_gids: Vec::new(),
        event_handlers: Vec::new(),
        working_directory,
        environment,
        isolators: Vec::new(),
        mount_points,
        ports,
    };
    Ok((app, stop_signal))
}

/// `/var/lib/redis/` → `var-lib-redis`; `/` → `root`.
fn volume_name(path: &str) -> String {
    let mut out = String::new();
    for ch in path.chars() {
        let c = ch.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() {
        "root".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = r#""architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}"#;

    #[test]
    fn maps_the_config() {
        let c = config(&format!(
            r#"{{{BASE},"config":{{"User":"nginx","Env":["PATH=/usr/bin","A=b=c","junk"],"Entrypoint":["/docker-entrypoint.sh"],
            "Cmd":["nginx","-g","daemon off;"],"WorkingDir":"/srv","ExposedPorts":{{"80/tcp":{{}},"53/udp":{{}},"9/sctp":{{}}}},
            "Volumes":{{"/var/cache/nginx":{{}},"/Data/":{{}}}},"StopSignal":"SIGQUIT"}}}}"#
        ));
        let (app, stop) = to_app(&c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(app.exec, ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]);
        assert_eq!((app.user.as_str(), app.group.as_str()), ("nginx", ""));
        let env: Vec<_> = app.environment.iter().map(|l| format!("{}={}", l.name, l.value)).collect();
        assert_eq!(env, ["PATH=/usr/bin", "A=b=c"]);
        assert_eq!(app.working_directory.as_deref(), Some("/srv"));
        let ports: Vec<_> = app.ports.iter().map(|p| (p.name.as_str(), p.port, p.protocol.as_str())).collect();
        assert_eq!(ports, [("53-udp", 53, "udp"), ("80-tcp", 80, "tcp")]);
        let mps: Vec<_> = app.mount_points.iter().map(|m| (m.name.as_str(), m.path.as_str())).collect();
        assert_eq!(mps, [("data", "/Data"), ("var-cache-nginx", "/var/cache/nginx")]);
        assert_eq!(stop.as_deref(), Some("SIGQUIT"));
    }

    #[test]
    fn users_and_defaults() {
        let user = |u: &str| {
            let c = config(&format!(r#"{{{BASE},"config":{{"User":"{u}"}}}}"#));
            to_app(&c).map(|(a, _)| (a.user, a.group))
        };
        assert_eq!(user("1000:1000"), Ok(("1000".into(), "1000".into())));
        assert_eq!(user("www:adm"), Ok(("www".into(), "adm".into())));
        assert_eq!(user(""), Ok(("0".into(), "0".into())));
        assert!(user(":x").is_err());
        assert!(user("a:").is_err());
        let (app, stop) = to_app(&config(&format!("{{{BASE}}}"))).unwrap_or_else(|e| panic!("{e}"));
        assert!(app.exec.is_empty() && stop.is_none() && app.working_directory.is_none());
    }

    #[test]
    fn refuses_bad_values() {
        for cfg in [
            r#""ExposedPorts":{"http/tcp":{}}"#,
            r#""ExposedPorts":{"0/tcp":{}}"#,
            r#""Volumes":{"data":{}}"#,
            r#""Volumes":{"/a/../b":{}}"#,
            r#""WorkingDir":"srv""#,
        ] {
            let c = config(&format!(r#"{{{BASE},"config":{{{cfg}}}}}"#));
            assert!(to_app(&c).is_err(), "{cfg}");
        }
    }

    #[test]
    fn volume_names() {
        assert_eq!(volume_name("/var/lib/redis/"), "var-lib-redis");
        assert_eq!(volume_name("/"), "root");
        assert_eq!(volume_name("/a_b.c"), "a-b-c");
    }
}
