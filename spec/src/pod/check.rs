//! From bytes to a [`PodFile`]: the size and UTF-8 checks, the pre-scan,
//! serde_yaml onto the raw shape, then every value parsed and checked, and
//! the checks across fields (unique names, mounts naming volumes, ports that
//! do not clash, no cycle among the apps).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

#[path = "podcfg.rs"]
pub(super) mod podcfg;

use super::scan::{self, FieldPath, Positions};
use super::{privs, values};
use super::{
    raw, Accel, AppSpec, ImageSpec, Isolation, Network, PodFile, PodFileError, PodFileErrorKind, PortMapping, Probe,
    Readiness, Resources, RestartPolicy, Volume, VolumeKind, DEFAULT_READINESS_TIMEOUT, DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT, MAX_APPS, MAX_ENTRIES, MAX_POD_FILE_BYTES, MAX_VOLUMES,
};
use crate::name::{AcIdentifier, AcName};
use crate::security::DEFAULT_CAPS;

use PodFileErrorKind::{Cycle, Invalid, Limit, Schema, Syntax, TooLarge};

mod devices;
mod secctx;

pub use secctx::userns_conflict;

/// Longest pod name: it is the pod's hostname.
const MAX_HOSTNAME: usize = 63;
/// Smallest memory limit: below it no process starts.
const MIN_MEMORY: u64 = 1 << 20;
const MAX_PATH: usize = 4096;

pub(super) fn parse(bytes: &[u8], file: &str) -> Result<PodFile> {
    let whole = |kind, line: Option<usize>, message: String| PodFileError {
        file: file.to_owned(),
        line,
        column: None,
        field: String::new(),
        kind,
        message,
    };
    if bytes.len() > MAX_POD_FILE_BYTES {
        let message = format!("the file is {} bytes; the limit is {MAX_POD_FILE_BYTES}", bytes.len());
        return Err(whole(TooLarge, None, message));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        whole(Syntax, Some(line), "the file is not UTF-8 text".to_owned())
    })?;
    let positions = scan::scan(text).map_err(|e| PodFileError {
        file: file.to_owned(),
        line: e.pos.map(|p| p.line),
        column: e.pos.map(|p| p.column),
        field: e.field.to_string(),
        kind: if e.limit { Limit } else { Syntax },
        message: e.message,
    })?;
    if positions.find(&FieldPath::default()).is_none() {
        return Err(whole(Schema, None, "the file is empty; a pod file needs at least name and apps".to_owned()));
    }
    let raw: raw::Pod = serde_yaml::from_str(text).map_err(|e| serde_error(file, &e))?;
    Cx { file, positions: &positions }.pod(raw)
}

/// serde_yaml's message is `PATH: MESSAGE at line L column C`; split it into
/// the parts of a [`PodFileError`].
fn serde_error(file: &str, e: &serde_yaml::Error) -> PodFileError {
    let loc = e.location();
    let mut text = e.to_string();
    if let Some(l) = &loc {
        if let Some(s) = text.strip_suffix(&format!(" at line {} column {}", l.line(), l.column())) {
            text = s.to_owned();
        }
    }
    // A path has no spaces; serde's own messages ("invalid type: ...") do.
    let (field, message) = match text.split_once(": ") {
        Some((f, m)) if !f.is_empty() && !f.contains(char::is_whitespace) => (f.to_owned(), m.to_owned()),
        _ => (String::new(), text),
    };
    PodFileError {
        file: file.to_owned(),
        line: loc.as_ref().map(serde_yaml::Location::line),
        column: loc.as_ref().map(serde_yaml::Location::column),
        field,
        kind: Schema,
        message,
    }
}

/// The context of the checks: where to find a field's line.
#[derive(Debug)]
struct Cx<'a> {
    file: &'a str,
    positions: &'a Positions,
}

type Result<T> = std::result::Result<T, PodFileError>;

impl Cx<'_> {
    fn err(&self, kind: PodFileErrorKind, field: &FieldPath, message: impl Into<String>) -> PodFileError {
        let pos = self.positions.find(field);
        PodFileError {
            file: self.file.to_owned(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            field: field.to_string(),
            kind,
            message: message.into(),
        }
    }

    fn invalid(&self, field: &FieldPath, message: impl Into<String>) -> PodFileError {
        self.err(Invalid, field, message)
    }

    fn name(&self, field: &FieldPath, s: &str) -> Result<AcName> {
        AcName::new(s).map_err(|e| self.invalid(field, e.to_string()))
    }

    fn count(&self, field: &FieldPath, len: usize, max: usize) -> Result<()> {
        if len > max {
            return Err(self.err(Limit, field, format!("{len} entries; the limit is {max}")));
        }
        Ok(())
    }

    fn no_nul(&self, field: &FieldPath, s: &str) -> Result<()> {
        if s.contains('\0') {
            return Err(self.invalid(field, "contains a NUL byte"));
        }
        Ok(())
    }

    fn abs_path(&self, field: &FieldPath, p: &str) -> Result<()> {
        self.no_nul(field, p)?;
        if !p.starts_with('/') {
            return Err(self.invalid(field, format!("path {p:?} is not absolute")));
        }
        if p.split('/').any(|c| c == "..") {
            return Err(self.invalid(field, format!("path {p:?} contains '..'")));
        }
        if p.len() > MAX_PATH {
            return Err(self.err(Limit, field, format!("path longer than {MAX_PATH} bytes")));
        }
        Ok(())
    }

    fn argv(&self, field: &FieldPath, argv: &[String]) -> Result<()> {
        if argv.is_empty() {
            return Err(self.invalid(field, "an empty command; give at least the program's absolute path"));
        }
        self.count(field, argv.len(), MAX_ENTRIES)?;
        // A bare program name is looked up in the app's PATH when it starts
        // (pod-init, as execvp and OCI runtimes do); a relative path is not
        // (it would depend on the working directory).
        if argv[0].is_empty() || argv[0].contains('/') {
            self.abs_path(&field.index(0), &argv[0])?;
        } else {
            self.no_nul(&field.index(0), &argv[0])?;
        }
        for (i, a) in argv.iter().enumerate() {
            self.no_nul(&field.index(i), a)?;
        }
        Ok(())
    }

    fn port(&self, field: &FieldPath, s: &str) -> Result<u16> {
        match s.parse::<i128>() {
            Ok(n) => u16::try_from(n)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| self.invalid(field, format!("port {n} is outside 1-65535"))),
            Err(_) => Err(self.invalid(field, format!("{s:?} is not a port number (1-65535)"))),
        }
    }

    fn duration(
        &self,
        field: &FieldPath,
        s: Option<&str>,
        default: std::time::Duration,
    ) -> Result<std::time::Duration> {
        s.map_or(Ok(default), |s| values::duration(s).map_err(|m| self.invalid(field, m)))
    }

    fn pod(&self, raw: raw::Pod) -> Result<PodFile> {
        let root = FieldPath::default();
        let name = self.name(&root.key("name"), &raw.name)?;
        if name.as_str().len() > MAX_HOSTNAME {
            let m = format!("the pod name is its hostname: at most {MAX_HOSTNAME} bytes");
            return Err(self.invalid(&root.key("name"), m));
        }
        let isolation = match raw.isolation.as_deref() {
            None | Some("namespace") => Isolation::Namespace,
            Some("vm") => Isolation::Vm,
            Some(o) => return Err(self.invalid(&root.key("isolation"), format!("{o:?} is not namespace or vm"))),
        };
        let accel = match raw.accel.as_deref() {
            None | Some("auto") => Accel::Auto,
            Some("kvm") => Accel::Kvm,
            Some("tcg") => Accel::Tcg,
            Some(o) => return Err(self.invalid(&root.key("accel"), format!("{o:?} is not auto, kvm or tcg"))),
        };
        let network = match raw.network.as_deref() {
            None => Network::Default,
            Some(s) => values::network(s).map_err(|m| self.invalid(&root.key("network"), m))?,
        };
        let userns = self.userns(raw.userns.as_ref())?;
        if userns.own() {
            if let Some(why) = userns_conflict(isolation == Isolation::Vm, network == Network::Host) {
                return Err(self.invalid(&root.key("userns"), why));
            }
        }
        let (host_pid, host_ipc) = self.host_namespaces(&raw, isolation, userns)?;

        self.count(&root.key("volumes"), raw.volumes.len(), MAX_VOLUMES)?;
        let mut volumes: Vec<Volume> = Vec::with_capacity(raw.volumes.len());
        for (i, v) in raw.volumes.iter().enumerate() {
            let path = root.at("volumes", i);
            let vol = self.volume(&path, v)?;
            if volumes.iter().any(|o| o.name == vol.name) {
                return Err(self.invalid(&path.key("name"), format!("a second volume named {}", vol.name)));
            }
            volumes.push(vol);
        }

        let settings = self.pod_settings(&raw, &network)?;
        self.count(&root.key("annotations"), raw.annotations.len(), MAX_ENTRIES)?;
        let mut annotations = BTreeMap::new();
        for (k, v) in raw.annotations {
            let field = root.key("annotations").key(&k);
            let key = AcIdentifier::new(k.as_str()).map_err(|e| self.invalid(&field, e.to_string()))?;
            self.no_nul(&field, &v)?;
            annotations.insert(key, v);
        }

        // `apps: []` is a sandbox: the pod holds its namespaces and network
        // until stopped, and apps come and go through pod-init's control channel.
        self.count(&root.key("apps"), raw.apps.len(), MAX_APPS)?;
        let mut apps: Vec<AppSpec> = Vec::with_capacity(raw.apps.len());
        for (i, a) in raw.apps.into_iter().enumerate() {
            let path = root.at("apps", i);
            let app = self.app(&path, a, &mut volumes)?;
            if apps.iter().any(|o| o.name == app.name) {
                return Err(self.invalid(&path.key("name"), format!("a second app named {}", app.name)));
            }
            apps.push(app);
        }

        let podcfg::PodSettings { hostname, dns, sysctls, ports, cgroup_parent } = settings;
        let pod = PodFile {
            name,
            isolation,
            network,
            accel,
            userns,
            host_pid,
            host_ipc,
            apps,
            volumes,
            annotations,
            hostname,
            dns,
            sysctls,
            ports,
            cgroup_parent,
        };
        self.own_pid_with_userns(&pod)?;
        self.references(&pod)?;
        self.ports(&pod)?;
        self.pod_ports(&pod)?;
        self.cycle(&pod.apps)?;
        Ok(pod)
    }

    fn volume(&self, path: &FieldPath, v: &raw::Volume) -> Result<Volume> {
        let name = self.name(&path.key("name"), &v.name)?;
        let kind = match v.kind.as_str() {
            "empty" => {
                if v.source.is_some() {
                    return Err(self.invalid(&path.key("source"), "only host volumes have a source"));
                }
                if v.read_only.is_some() {
                    let m = "an empty volume starts empty: readOnly would keep it so; set readOnly on the mounts";
                    return Err(self.invalid(&path.key("readOnly"), m));
                }
                VolumeKind::Empty
            }
            "host" => {
                let Some(source) = &v.source else {
                    return Err(self.invalid(path, "a host volume needs source: /absolute/host/path"));
                };
                self.abs_path(&path.key("source"), source)?;
                VolumeKind::Host { source: source.clone(), read_only: v.read_only.unwrap_or(false) }
            }
            o => return Err(self.invalid(&path.key("kind"), format!("{o:?} is not empty or host"))),
        };
        Ok(Volume { name, kind })
    }

    /// One app; its anonymous host volumes (`mounts: [{ host: ... }]`)
    /// join `volumes` as `<app>-host-<index>`.
    fn app(&self, path: &FieldPath, a: raw::App, volumes: &mut Vec<Volume>) -> Result<AppSpec> {
        let name = self.name(&path.key("name"), &a.name)?;
        let source = values::image(&a.image).map_err(|m| self.invalid(&path.key("image"), m))?;
        let security = self.app_security(path, &a)?;
        let image = ImageSpec { reference: a.image, source };
        if let Some(exec) = &a.exec {
            self.argv(&path.key("exec"), exec)?;
        }
        for (key, v) in [("user", &a.user), ("group", &a.group)] {
            if let Some(v) = v {
                if v.is_empty() || v.len() > 256 || v.contains(['\0', ':', '\n']) {
                    let m = format!("{v:?} is not a user or group name, ID or path");
                    return Err(self.invalid(&path.key(key), m));
                }
            }
        }
        if let Some(wd) = &a.working_directory {
            self.abs_path(&path.key("workingDirectory"), wd)?;
        }
        self.count(&path.key("env"), a.env.len(), MAX_ENTRIES)?;
        for (k, v) in &a.env {
            let field = path.key("env").key(k);
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(self.invalid(&field, format!("{k:?} is not a variable name (no '=' or NUL)")));
            }
            self.no_nul(&field, v)?;
        }
        let after = self.names(&path.key("after"), &a.after)?;
        let requires = self.names(&path.key("requires"), &a.requires)?;
        let readiness = a.readiness.as_ref().map(|r| self.readiness(&path.key("readiness"), r)).transpose()?;
        self.count(&path.key("ports"), a.ports.len(), MAX_ENTRIES)?;
        let ports = a
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| self.port_mapping(&path.at("ports", i), p))
            .collect::<Result<_>>()?;
        let resources =
            a.resources.as_ref().map_or(Ok(Resources::default()), |r| self.resources(&path.key("resources"), r))?;
        let restart = match a.restart.as_deref() {
            None | Some("never") => RestartPolicy::Never,
            Some("on-failure") => RestartPolicy::OnFailure,
            Some("always") => RestartPolicy::Always,
            Some(o) => {
                return Err(self.invalid(&path.key("restart"), format!("{o:?} is not never, on-failure or always")))
            }
        };
        let stop_timeout = self.duration(&path.key("stopTimeout"), a.stop_timeout.as_deref(), DEFAULT_STOP_TIMEOUT)?;
        let start_timeout =
            self.duration(&path.key("startTimeout"), a.start_timeout.as_deref(), DEFAULT_START_TIMEOUT)?;
        let mounts = self.mounts(path, &name, &a.mounts, volumes)?;
        let mut capabilities = match &a.capabilities {
            None => DEFAULT_CAPS,
            Some(c) => {
                let field = path.key("capabilities");
                self.count(&field.key("add"), c.add.len(), MAX_ENTRIES)?;
                self.count(&field.key("drop"), c.drop.len(), MAX_ENTRIES)?;
                privs::capabilities(&c.add, &c.drop).map_err(|e| self.invalid(&field.at(e.list, e.index), e.message))?
            }
        };
        let mut seccomp = self.seccomp(&path.key("seccomp"), a.seccomp.as_deref())?;
        if security.privileged {
            // As Docker's --privileged: whatever else the app asks for.
            capabilities = crate::security::CapSet::ALL;
            seccomp = crate::security::SeccompSpec::Unconfined;
        }
        let log = a.log.as_ref().map(|l| self.log(&path.key("log"), l)).transpose()?;
        let devices = self.devices(&path.key("devices"), &a.devices)?;
        Ok(AppSpec {
            name,
            image,
            exec: a.exec,
            user: a.user,
            group: a.group,
            working_directory: a.working_directory,
            env: a.env,
            after,
            requires,
            readiness,
            ports,
            resources,
            restart,
            stop_timeout,
            start_timeout,
            mounts,
            capabilities,
            seccomp,
            read_only_root_fs: a.read_only_root_fs,
            security,
            log,
            stdin: a.stdin,
            tty: a.terminal,
            devices,
        })
    }

    fn log(&self, path: &FieldPath, l: &raw::Log) -> Result<crate::stdio::AppLog> {
        let volume = self.name(&path.key("volume"), &l.volume)?;
        crate::stdio::check_relative_path(&l.path).map_err(|m| self.invalid(&path.key("path"), m))?;
        let format = match l.format.as_deref() {
            None => crate::stdio::LogFormat::Raw,
            Some(f) => crate::stdio::LogFormat::parse(f)
                .ok_or_else(|| self.invalid(&path.key("format"), format!("{f:?} is not raw or cri")))?,
        };
        Ok(crate::stdio::AppLog { volume, path: l.path.clone(), format })
    }

    fn names(&self, field: &FieldPath, list: &[String]) -> Result<Vec<AcName>> {
        self.count(field, list.len(), MAX_APPS)?;
        let mut out: Vec<AcName> = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            let n = self.name(&field.index(i), s)?;
            if out.contains(&n) {
                return Err(self.invalid(&field.index(i), format!("{n} is listed twice")));
            }
            out.push(n);
        }
        Ok(out)
    }

    fn readiness(&self, path: &FieldPath, r: &raw::Readiness) -> Result<Readiness> {
        let probe = match (&r.tcp, &r.exec) {
            (Some(port), None) => Probe::Tcp(self.port(&path.key("tcp"), port)?),
            (None, Some(argv)) => {
                self.argv(&path.key("exec"), argv)?;
                Probe::Exec(argv.clone())
            }
            _ => return Err(self.invalid(path, "give exactly one probe: tcp: PORT or exec: [COMMAND...]")),
        };
        let timeout = self.duration(&path.key("timeout"), r.timeout.as_deref(), DEFAULT_READINESS_TIMEOUT)?;
        if timeout.is_zero() {
            return Err(self.invalid(&path.key("timeout"), "a zero timeout leaves no time to become ready"));
        }
        Ok(Readiness { probe, timeout })
    }

    fn port_mapping(&self, path: &FieldPath, p: &raw::Port) -> Result<PortMapping> {
        let name = self.name(&path.key("name"), &p.name)?;
        let host_port = self.port(&path.key("host"), &p.host)?;
        let host_ip = match &p.host_ip {
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(s) => {
                s.parse().map_err(|_| self.invalid(&path.key("hostIP"), format!("{s:?} is not an IP address")))?
            }
        };
        let protocol = self.protocol(&path.key("protocol"), p.protocol.as_deref())?;
        Ok(PortMapping { name, host_port, host_ip, protocol })
    }

    fn resources(&self, path: &FieldPath, r: &raw::Resources) -> Result<Resources> {
        let memory_bytes = match &r.memory {
            None => None,
            Some(s) => {
                let f = path.key("memory");
                let n = values::size(s).map_err(|m| self.invalid(&f, m))?;
                if n < MIN_MEMORY {
                    return Err(self.invalid(&f, format!("{s:?} is below 1Mi; no process starts in that")));
                }
                Some(n)
            }
        };
        let cpu_millis = match &r.cpu {
            None => None,
            Some(s) => {
                let f = path.key("cpu");
                let n = values::cpu_millis(s).map_err(|m| self.invalid(&f, m))?;
                if n == 0 {
                    return Err(self.invalid(&f, "a CPU limit of zero; leave cpu out for no limit"));
                }
                Some(n)
            }
        };
        let pids = match &r.pids {
            None => None,
            Some(s) => {
                let f = path.key("pids");
                let n = s.parse::<u64>().map_err(|_| self.invalid(&f, format!("{s:?} is not a whole number")))?;
                if n == 0 {
                    return Err(self.invalid(&f, "a pids limit of zero; leave pids out for no limit"));
                }
                Some(n)
            }
        };
        let (cpu_shares, oom_score_adj) = self.resource_extras(path, r)?;
        Ok(Resources { memory_bytes, cpu_millis, pids, cpu_shares, oom_score_adj })
    }

    /// Every `after`/`requires` names another app; every mount a volume.
    fn references(&self, pod: &PodFile) -> Result<()> {
        let root = FieldPath::default();
        for (i, app) in pod.apps.iter().enumerate() {
            for (key, list) in [("after", &app.after), ("requires", &app.requires)] {
                for (j, dep) in list.iter().enumerate() {
                    let field = root.at("apps", i).at(key, j);
                    if *dep == app.name {
                        return Err(self.invalid(&field, format!("app {dep} cannot depend on itself")));
                    }
                    if pod.app(dep.as_str()).is_none() {
                        return Err(self.invalid(&field, format!("no app named {dep} in this pod")));
                    }
                }
            }
            if let Some(log) = &app.log {
                match pod.volume(log.volume.as_str()).map(|v| &v.kind) {
                    None => {
                        let msg = format!("no volume named {} under volumes", log.volume);
                        return Err(self.invalid(&root.at("apps", i).key("log").key("volume"), msg));
                    }
                    Some(VolumeKind::Host { read_only: true, .. }) => {
                        let msg = format!("volume {} is read-only: no log can be written into it", log.volume);
                        return Err(self.invalid(&root.at("apps", i).key("log").key("volume"), msg));
                    }
                    Some(_) => {}
                }
            }
            for (j, m) in app.mounts.iter().enumerate() {
                if pod.volume(m.volume.as_str()).is_none() {
                    let declared: Vec<&str> = pod.volumes.iter().map(|v| v.name.as_str()).collect();
                    let known = if declared.is_empty() { "none are declared".to_owned() } else { declared.join(", ") };
                    let msg = format!("no volume named {} under volumes ({known})", m.volume);
                    return Err(self.invalid(&root.at("apps", i).at("mounts", j).key("volume"), msg));
                }
            }
        }
        Ok(())
    }

    /// Published ports agree with the network and do not clash.
    fn ports(&self, pod: &PodFile) -> Result<()> {
        let root = FieldPath::default();
        let mut seen: Vec<(&PortMapping, FieldPath)> = Vec::new();
        for (i, app) in pod.apps.iter().enumerate() {
            for (j, p) in app.ports.iter().enumerate() {
                let field = root.at("apps", i).at("ports", j);
                match pod.network {
                    // A VM's qemu forwards them into the guest with no network.
                    Network::None if pod.isolation == Isolation::Vm => {}
                    Network::None => {
                        let m = "network none: nothing outside the pod could reach a published port";
                        return Err(self.invalid(&field, m));
                    }
                    Network::Host => {
                        let m = "network host: apps listen on the host's ports directly; remove ports";
                        return Err(self.invalid(&field, m));
                    }
                    Network::Default | Network::Named(_) => {}
                }
                let clash = seen.iter().find(|(o, _)| {
                    o.protocol == p.protocol
                        && o.host_port == p.host_port
                        && (o.host_ip == p.host_ip || o.host_ip.is_unspecified() || p.host_ip.is_unspecified())
                });
                if let Some((_, other)) = clash {
                    let msg = format!("host port {}/{} is already published by {other}", p.host_port, p.protocol);
                    return Err(self.invalid(&field.key("host"), msg));
                }
                seen.push((p, field));
            }
        }
        Ok(())
    }

    /// The `after`/`requires` graph has no cycle: a depth-first search in
    /// file order, naming the first cycle met in order.
    fn cycle(&self, apps: &[AppSpec]) -> Result<()> {
        let index: BTreeMap<&str, usize> = apps.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();
        let root = FieldPath::default();
        let mut edges: Vec<Vec<(usize, FieldPath)>> = vec![Vec::new(); apps.len()];
        for (i, a) in apps.iter().enumerate() {
            for (key, list) in [("after", &a.after), ("requires", &a.requires)] {
                for (j, d) in list.iter().enumerate() {
                    if let Some(&to) = index.get(d.as_str()) {
                        edges[i].push((to, root.at("apps", i).at(key, j)));
                    }
                }
            }
        }
        let mut dfs = Dfs { edges: &edges, state: vec![Mark::New; apps.len()], stack: Vec::new() };
        for start in 0..apps.len() {
            if let Some((cycle, field)) = dfs.visit(start) {
                let names: Vec<&str> = cycle.iter().map(|&i| apps[i].name.as_str()).collect();
                return Err(self.err(Cycle, &field, format!("apps form a cycle: {}", names.join(" -> "))));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    New,
    OnPath,
    Done,
}

#[derive(Debug)]
struct Dfs<'a> {
    edges: &'a [Vec<(usize, FieldPath)>],
    state: Vec<Mark>,
    stack: Vec<usize>,
}

impl Dfs<'_> {
    /// The cycle through the current path, its first app repeated at the
    /// end, and the field of the edge that closes it. Recursion depth is at
    /// most the number of apps (256).
    fn visit(&mut self, at: usize) -> Option<(Vec<usize>, FieldPath)> {
        if self.state[at] != Mark::New {
            return None;
        }
        self.state[at] = Mark::OnPath;
        self.stack.push(at);
        let edges = self.edges;
        for (to, field) in &edges[at] {
            match self.state[*to] {
                Mark::Done => {}
                Mark::OnPath => {
                    let from = self.stack.iter().position(|&i| i == *to).unwrap_or(0);
                    let mut cycle = self.stack[from..].to_vec();
                    cycle.push(*to);
                    return Some((cycle, field.clone()));
                }
                Mark::New => {
                    if let Some(found) = self.visit(*to) {
                        return Some(found);
                    }
                }
            }
        }
        self.stack.pop();
        self.state[at] = Mark::Done;
        None
    }
}

/// A path compared as the kernel resolves it: `//` and `.` folded, no
/// trailing `/`.
fn normalise(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    format!("/{}", parts.join("/"))
}
