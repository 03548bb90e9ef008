//! Unit files: the stage1 → stage2 contract. stage1 writes one unit per app,
//! `pod-init` (stage2) reads them. Parsing and rendering only; no I/O.
//!
//! # The pod root `pod-init --root DIR` sees
//!
//! - `DIR/units/<app>.unit`: one unit per app, named by its appc AC name
//!   (`[a-z0-9]+(-[a-z0-9]+)*`); at most [`MAX_UNIT_BYTES`] each.
//! - `DIR/apps/<app>/rootfs`: the app's root filesystem, fully prepared by
//!   stage1 (its `/proc`, `/dev`, `/sys`, `/etc/hosts` and volumes mounted).
//! - `DIR/status/` and `DIR/logs/`: `pod-init` writes `status/<app>.json`,
//!   `status/pod.json` and `logs/<app>.log` there (see stage2-init/README.md).
//!
//! # Syntax: a documented subset of systemd's unit files
//!
//! ```text
//! # a comment (a whole line starting with '#' or ';'; there are no trailing comments)
//! [Unit]
//! Description=redis
//! After=db other
//! Requires=db
//! [Service]
//! ExecStartPre=/usr/bin/prepare-data
//! ExecStart=/usr/bin/redis-server --port 6379 "arg with spaces"
//! ExecStopPost=/usr/bin/clean-up
//! Environment="REDIS_ADDR=127.0.0.1:6379" B=2
//! WorkingDirectory=/data
//! User=redis
//! Group=redis
//! SupplementaryGroups=audio 44
//! NoNewPrivileges=yes
//! Restart=on-failure
//! RestartSec=0.5
//! TimeoutStopSec=10
//! TimeoutStartSec=90
//! [X-Pod]
//! ReadinessTCP=6379
//! ReadinessTimeoutSec=60
//! Cgroup=/cgroup/db/0 /cgroup/db/1
//! Capabilities=CAP_CHOWN CAP_KILL CAP_NET_BIND_SERVICE
//! SeccompFilter=/units/db.seccomp.bpf /units/db.clone3.seccomp.bpf
//! SupplementaryGroupsPolicy=merge
//! ```
//!
//! - Sections `[Unit]`, `[Service]` and `[X-Pod]`, in any order. An unknown
//!   section or key is an error, as is a scalar key given twice. Whitespace
//!   around `=` and at both ends of a value is dropped; there is no line
//!   continuation.
//! - `After=`/`Requires=`: app names separated by spaces, repeatable.
//!   `Requires=` implies `After=`. An app starts once each app it is ordered
//!   after is *settled*: ready, or exited for good. If a required app ends
//!   for good as a failure without ever having been ready, the requiring app
//!   is not started.
//! - `ExecStart=` (required), `ExecStartPre=`, `ExecStopPost=`,
//!   `ReadinessExec=`, `Environment=`,
//!   `SupplementaryGroups=`: words split on spaces and tabs, systemd quoting:
//!   a word may be wrapped whole in `"..."` or `'...'` (the closing quote must
//!   end the word); C escapes `\a \b \f \n \r \t \v \\ \" \' \s \xHH` work in
//!   and outside quotes. Unlike systemd there is no `$VAR` or `%` expansion
//!   and no `-@+!:` prefixes: `$` and `%` are literal. The first word of a
//!   command is an absolute path or a bare name looked up in `PATH`.
//! - `Environment=`: `NAME=VALUE` words, repeatable; a later value for a name
//!   replaces the earlier one. `Environment=`, `After=`, `Requires=`,
//!   `SupplementaryGroups=` and `Cgroup=` with an empty value reset the list.
//! - `User=`/`Group=`: a name or a numeric id, resolved in the app's rootfs
//!   (`/etc/passwd`, `/etc/group`). Default: root; the group defaults to the
//!   user's primary group.
//! - `Restart=no|on-failure|always` (default `no`). `RestartSec=` (default 1)
//!   is the first backoff; it doubles up to 30 s and is reset once an app
//!   stays up 10 s. `TimeoutStopSec=` (default 10) is the grace between
//!   SIGTERM and SIGKILL.
//! - `ExecStartPre=`/`ExecStopPost=` (each at most once): the image's
//!   appc event handlers `pre-start` and `post-stop`. Each runs as the app
//!   runs (its rootfs, environment, user, capabilities, cgroups, seccomp
//!   filters), its output in the app's log. `pre-start` runs before every
//!   start of the app's program and must exit 0 within `TimeoutStartSec=`
//!   (default 90, as systemd's): otherwise (killed at the timeout) that
//!   start fails, as a failed exec does. `post-stop` runs after every end of
//!   the program (also when it was stopped, or its pre-start failed), within
//!   `TimeoutStopSec=`; its exit code is logged and changes nothing else.
//!   The app is not done, nor restarted, until its post-stop has ended.
//! - Durations: seconds as a decimal number (`0.25`), or with an `s` or `ms`
//!   suffix (`250ms`); at most [`MAX_DURATION`].
//! - `[X-Pod]`: at most one of `ReadinessTCP=` (`PORT`, meaning
//!   `127.0.0.1:PORT`, or `ADDR:PORT`: ready once a TCP connection succeeds)
//!   and `ReadinessExec=` (ready once the command exits 0; it runs in the
//!   app's rootfs as the app's user). `ReadinessTimeoutSec=` (default 60)
//!   bounds the wait; an app that is not ready in time counts as failed. An
//!   app without a readiness check is ready once its program is executing.
//! - `[X-Pod] Cgroup=`: absolute paths (inside the pod root) of cgroup
//!   directories, repeatable. Each process of the app (and its readiness
//!   probes) joins them before exec, writing its pid into each
//!   `cgroup.procs`, then unshares a cgroup namespace, so the app sees its
//!   own cgroup as the root. stage1 binds these directories into the pod root.
//! - `MemoryMax=` (bytes), `TasksMax=`, `CPUQuota=` (`50%`, one decimal),
//!   `CPUWeight=` (1-10000), each at most once: limits pod-init enforces
//!   itself, in a cgroup v2 of its own for the app, when the unit names no
//!   `Cgroup=` (the VM stage1's units: see [`Limits`]).
//! - `[X-Pod] Capabilities=`: the app's capability set, `CAP_` names (or
//!   without the prefix), given at most once; empty means none; absent means
//!   [`DEFAULT_CAPS`] (Docker's default). Every other capability leaves the
//!   bounding set before the app's user is taken; an app running as root
//!   then holds exactly this set (permitted, effective, inheritable; no
//!   ambient), any other user none.
//! - `NoNewPrivileges=yes|no` (default yes): `no_new_privs` for the app.
//!   With `no`, setuid binaries and file capabilities work (within the
//!   bounding set), and the seccomp filters are installed before the app's
//!   user is taken, while pod-init still holds CAP_SYS_ADMIN (as runc).
//! - `[X-Pod] PIDNamespace=pod|own` (default pod): `own` makes the app's
//!   program PID 1 of a pid namespace of its own (stage2-init/src/pidns.rs).
//! - `[X-Pod] SupplementaryGroupsPolicy=merge|strict` (default merge): with
//!   `strict` the groups listing the user in the app's /etc/group are not
//!   added, only the primary group and `SupplementaryGroups=`.
//! - `[X-Pod] SeccompFilter=`: absolute paths (inside the pod root) of
//!   seccomp filters, given at most once: each file a raw array of
//!   `struct sock_filter` (8 bytes each, native byte order) as
//!   `seccomp(SECCOMP_SET_MODE_FILTER)` takes it, at most 4096 instructions.
//!   pod-init reads them at startup (a bad one fails the pod) and the app's
//!   process installs them in order as its very last step before execve.
//!   Absent: no filter. stage1 compiles them (`stage1-ns/src/seccomp.rs`).
//! - `[X-Pod] LogPath=`: an absolute path (inside the pod root) the app's
//!   output is appended to instead of `logs/<app>.log`; `LogFormat=raw|cri`
//!   (default raw): `cri` writes stdout and stderr, through a pipe each,
//!   as CRI log lines (`crate::stdio::LogFormat`). `Stdin=fifo`: the app's
//!   stdin is the FIFO `/stdin/<app>` (`crate::stdio::stdin_fifo`) instead
//!   of /dev/null. `TTY=yes`: the app's stdin, stdout and stderr are a
//!   new pseudo-terminal of its own /dev/pts, its controlling terminal;
//!   pod-init holds the master, logs what it reads there as stdout and
//!   writes the stdin FIFO's input into it (`crate::stdio`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::name::{AcName, NameError};
use crate::security::{CapSet, DEFAULT_CAPS};
use crate::stdio::LogFormat;

mod limits;
mod values;
mod words;

pub use limits::Limits;
use values::{account_ok, command, env_name_ok, tcp_addr};
pub use values::{parse_duration, render_duration, signal_number};
pub use words::{join_words, quote_word, split_words, QuoteError};

/// A unit file larger than this is rejected.
pub const MAX_UNIT_BYTES: usize = 1024 * 1024;
/// The longest duration any key accepts (a year).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
pub const DEFAULT_RESTART_SEC: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT_STOP: Duration = Duration::from_secs(10);
pub const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(60);
/// systemd's default `TimeoutStartSec=`: how long `ExecStartPre=` may run.
pub const DEFAULT_TIMEOUT_START: Duration = Duration::from_secs(90);

/// SIGTERM's number on Linux.
pub const SIGTERM: i32 = 15;

/// One app's unit: what to run, as whom, in which order, and how to supervise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub description: Option<String>,
    pub after: Vec<AcName>,
    pub requires: Vec<AcName>,
    pub exec_start: Vec<String>,
    /// `ExecStartPre=`: the appc `pre-start` event handler.
    pub exec_start_pre: Option<Vec<String>>,
    /// `ExecStopPost=`: the appc `post-stop` event handler.
    pub exec_stop_post: Option<Vec<String>>,
    /// Unique names, in first-assignment order.
    pub environment: Vec<(String, String)>,
    pub working_directory: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub supplementary_groups: Vec<String>,
    pub restart: Restart,
    pub restart_sec: Duration,
    pub timeout_stop: Duration,
    /// `TimeoutStartSec=`: how long `ExecStartPre=` may run.
    pub timeout_start: Duration,
    /// `KillSignal=`: what stopping the app sends first (default SIGTERM;
    /// an OCI image's StopSignal), SIGKILL after `TimeoutStopSec`.
    pub kill_signal: i32,
    /// `OOMScoreAdjust=` (-1000 to 1000): the app's `oom_score_adj`, set
    /// before it drops its privileges; absent: inherited from pod-init.
    pub oom_score_adjust: Option<i32>,
    /// `MemoryMax=`, `TasksMax=`, `CPUQuota=`, `CPUWeight=`: limits
    /// pod-init enforces in a cgroup of its own for the app (limits.rs).
    pub limits: Limits,
    pub readiness: Option<Readiness>,
    /// `[X-Pod] Cgroup=`: cgroup directories (paths inside the pod root)
    /// the app's process joins before exec, by writing its pid into each
    /// `cgroup.procs`; then it unshares a cgroup namespace rooted there.
    pub cgroups: Vec<String>,
    /// `[X-Pod] Capabilities=`: the app's capability set.
    pub capabilities: CapSet,
    /// `[X-Pod] SeccompFilter=`: BPF files (paths inside the pod root)
    /// installed in order just before execve.
    pub seccomp_filters: Vec<String>,
    /// `[X-Pod] SharedMounts=`: volume mount points (paths inside the
    /// app's rootfs) that stay peers of the pod's mount there (`propagation:
    /// rshared`), so the app's own mounts below them reach the host; every
    /// other mount of the app's namespace is a slave of the pod's.
    pub shared_mounts: Vec<String>,
    /// `NoNewPrivileges=`.
    pub no_new_privileges: bool,
    /// `[X-Pod] SupplementaryGroupsPolicy=strict` is `false`: the image's
    /// /etc/group memberships of the user are not added.
    pub image_groups: bool,
    /// `[X-Pod] PIDNamespace=own`: the app's program is PID 1 of a pid
    /// namespace of its own (default `pod`: the pod's).
    pub own_pid: bool,
    /// `[X-Pod] LogPath=`: the app's log file (inside the pod root);
    /// `None`: `logs/<app>.log`.
    pub log_path: Option<String>,
    /// `[X-Pod] LogFormat=`.
    pub log_format: LogFormat,
    /// `[X-Pod] Stdin=fifo`.
    pub stdin_fifo: bool,
    /// `[X-Pod] TTY=yes`.
    pub tty: bool,
}

/// When a finished app is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No,
    OnFailure,
    Always,
}

/// How to tell that an app is ready, and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub check: ReadinessCheck,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadinessCheck {
    /// Ready once a TCP connection to this address succeeds.
    Tcp(SocketAddr),
    /// Ready once this command exits 0.
    Exec(Vec<String>),
}

/// Why a unit file was rejected: the file, line and key, and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub kind: UnitErrorKind,
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for UnitError {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitErrorKind {
    #[error("unit is {len} bytes, the limit is {MAX_UNIT_BYTES}")]
    TooLarge { len: usize },
    #[error("expected `[Section]`, `Key=Value`, a comment or an empty line")]
    Syntax,
    #[error("unknown section [{0}] (known: [Unit], [Service], [X-Pod])")]
    UnknownSection(String),
    #[error("key outside of any section")]
    NoSection,
    #[error("unknown key in [{0}]")]
    UnknownKey(&'static str),
    #[error("given twice")]
    Duplicate,
    #[error("{0}")]
    Quote(#[from] QuoteError),
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("invalid value {value:?}: {why}")]
    Invalid { value: String, why: &'static str },
    #[error("{0} is required")]
    Missing(&'static str),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Unit,
    Service,
    Pod,
}

impl Unit {
    /// A unit running `exec_start` with every other setting at its default.
    pub fn new(exec_start: Vec<String>) -> Unit {
        Unit {
            description: None,
            after: Vec::new(),
            requires: Vec::new(),
            exec_start,
            exec_start_pre: None,
            exec_stop_post: None,
            environment: Vec::new(),
            working_directory: None,
            user: None,
            group: None,
            supplementary_groups: Vec::new(),
            restart: Restart::No,
            restart_sec: DEFAULT_RESTART_SEC,
            timeout_stop: DEFAULT_TIMEOUT_STOP,
            timeout_start: DEFAULT_TIMEOUT_START,
            kill_signal: SIGTERM,
            oom_score_adjust: None,
            limits: Limits::default(),
            readiness: None,
            cgroups: Vec::new(),
            capabilities: DEFAULT_CAPS,
            seccomp_filters: Vec::new(),
            shared_mounts: Vec::new(),
            no_new_privileges: true,
            image_groups: true,
            own_pid: false,
            log_path: None,
            log_format: LogFormat::Raw,
            stdin_fifo: false,
            tty: false,
        }
    }

    /// The apps this one starts after: `After=` and `Requires=`, without
    /// repeats.
    pub fn dependencies(&self) -> Vec<&AcName> {
        let mut deps: Vec<&AcName> = Vec::new();
        for name in self.after.iter().chain(&self.requires) {
            if !deps.contains(&name) {
                deps.push(name);
            }
        }
        deps
    }

    /// Parses a unit; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Unit, UnitError> {
        let err = |line: Option<usize>, key: Option<&str>, kind: UnitErrorKind| UnitError {
            file: file.to_owned(),
            line,
            key: key.map(str::to_owned),
            kind,
        };
        if text.len() > MAX_UNIT_BYTES {
            return Err(err(None, None, UnitErrorKind::TooLarge { len: text.len() }));
        }
        let mut unit = Unit::new(Vec::new());
        let mut section = None;
        let mut seen: Vec<&str> = Vec::new();
        let (mut readiness_timeout, mut readiness_check) = (None, None);
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let lineno = Some(index + 1);
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(match name {
                    "Unit" => Section::Unit,
                    "Service" => Section::Service,
                    "X-Pod" => Section::Pod,
                    other => return Err(err(lineno, None, UnitErrorKind::UnknownSection(other.to_owned()))),
                });
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(lineno, None, UnitErrorKind::Syntax));
            };
            let (key, value) = (key.trim_end(), value.trim_start());
            let fail = |kind| err(lineno, Some(key), kind);
            let Some(section) = section else { return Err(fail(UnitErrorKind::NoSection)) };
            let known = match section {
                Section::Unit => &["Description", "After", "Requires"][..],
                Section::Service => &[
                    "ExecStart",
                    "ExecStartPre",
                    "ExecStopPost",
                    "Environment",
                    "WorkingDirectory",
                    "User",
                    "Group",
                    "SupplementaryGroups",
                    "Restart",
                    "RestartSec",
                    "TimeoutStopSec",
                    "TimeoutStartSec",
                    "KillSignal",
                    "OOMScoreAdjust",
                    "NoNewPrivileges",
                    "MemoryMax",
                    "TasksMax",
                    "CPUQuota",
                    "CPUWeight",
                ][..],
                Section::Pod => &[
                    "ReadinessTCP",
                    "ReadinessExec",
                    "ReadinessTimeoutSec",
                    "Cgroup",
                    "Capabilities",
                    "SeccompFilter",
                    "SharedMounts",
                    "SupplementaryGroupsPolicy",
                    "PIDNamespace",
                    "LogPath",
                    "LogFormat",
                    "Stdin",
                    "TTY",
                ][..],
            };
            let Some(&key_static) = known.iter().find(|k| **k == key) else {
                let name = match section {
                    Section::Unit => "Unit",
                    Section::Service => "Service",
                    Section::Pod => "X-Pod",
                };
                return Err(fail(UnitErrorKind::UnknownKey(name)));
            };
            let is_list = matches!(key, "After" | "Requires" | "Environment" | "SupplementaryGroups" | "Cgroup");
            if !is_list {
                if seen.contains(&key_static) {
                    return Err(fail(UnitErrorKind::Duplicate));
                }
                seen.push(key_static);
            }
            let invalid = |why| fail(UnitErrorKind::Invalid { value: value.to_owned(), why });
            let words = || split_words(value).map_err(|e| fail(e.into()));
            let duration = |positive: bool| match parse_duration(value) {
                Some(d) if !positive || !d.is_zero() => Ok(d),
                _ if positive => Err(invalid("expected a positive number of seconds, at most a year")),
                _ => Err(invalid("expected a number of seconds, at most a year")),
            };
            match key {
                // `lines()` ends a line at `\n` only: a lone `\r` inside reads
                // as the space `render` writes for it, so the two agree.
                "Description" => unit.description = Some(value.replace('\r', " ")),
                "After" | "Requires" => {
                    let list = if key == "After" { &mut unit.after } else { &mut unit.requires };
                    if value.is_empty() {
                        list.clear();
                    }
                    for word in words()? {
                        list.push(AcName::new(word).map_err(|e| fail(e.into()))?);
                    }
                }
                "ExecStart" => unit.exec_start = command(words()?).map_err(invalid)?,
                "ExecStartPre" => unit.exec_start_pre = Some(command(words()?).map_err(invalid)?),
                "ExecStopPost" => unit.exec_stop_post = Some(command(words()?).map_err(invalid)?),
                "ReadinessExec" => readiness_check = Some(ReadinessCheck::Exec(command(words()?).map_err(invalid)?)),
                "Environment" => {
                    if value.is_empty() {
                        unit.environment.clear();
                    }
                    for word in words()? {
                        let (name, val) = word.split_once('=').filter(|(n, _)| env_name_ok(n)).ok_or_else(|| {
                            fail(UnitErrorKind::Invalid { value: word.clone(), why: "expected NAME=VALUE" })
                        })?;
                        match unit.environment.iter_mut().find(|(n, _)| n == name) {
                            Some(slot) => slot.1 = val.to_owned(),
                            None => unit.environment.push((name.to_owned(), val.to_owned())),
                        }
                    }
                }
                "WorkingDirectory" => {
                    if !value.starts_with('/') || value.chars().any(char::is_control) {
                        return Err(invalid("expected an absolute path"));
                    }
                    unit.working_directory = Some(value.to_owned());
                }
                "User" | "Group" => {
                    if !account_ok(value) {
                        return Err(invalid("expected a user or group name, or a numeric id"));
                    }
                    *(if key == "User" { &mut unit.user } else { &mut unit.group }) = Some(value.to_owned());
                }
                "SupplementaryGroups" => {
                    if value.is_empty() {
                        unit.supplementary_groups.clear();
                    }
                    for word in words()? {
                        if !account_ok(&word) {
                            return Err(fail(UnitErrorKind::Invalid { value: word, why: "expected a group or gid" }));
                        }
                        unit.supplementary_groups.push(word);
                    }
                }
                "Cgroup" => {
                    if value.is_empty() {
                        unit.cgroups.clear();
                    }
                    for word in words()? {
                        if !word.starts_with('/') || word.split('/').any(|c| c == "..") {
                            return Err(fail(UnitErrorKind::Invalid { value: word, why: "expected an absolute path" }));
                        }
                        unit.cgroups.push(word);
                    }
                }
                "Capabilities" => {
                    unit.capabilities = words().and_then(|w| {
                        CapSet::parse_names(&w).map_err(|_| invalid("expected capability names like CAP_CHOWN"))
                    })?;
                }
                "SeccompFilter" => {
                    for word in words()? {
                        if !word.starts_with('/') || word.split('/').any(|c| c == "..") {
                            return Err(fail(UnitErrorKind::Invalid { value: word, why: "expected an absolute path" }));
                        }
                        unit.seccomp_filters.push(word);
                    }
                }
                "SharedMounts" => {
                    for word in words()? {
                        if !word.starts_with('/') || word.split('/').any(|c| c == "..") {
                            return Err(fail(UnitErrorKind::Invalid { value: word, why: "expected an absolute path" }));
                        }
                        unit.shared_mounts.push(word);
                    }
                }
                "LogPath" => {
                    if !value.starts_with('/')
                        || value.split('/').any(|c| c == "..")
                        || value.contains(char::is_control)
                    {
                        return Err(invalid("expected an absolute path"));
                    }
                    unit.log_path = Some(value.to_owned());
                }
                "LogFormat" => {
                    unit.log_format = LogFormat::parse(value).ok_or_else(|| invalid("expected raw or cri"))?
                }
                "Stdin" => {
                    unit.stdin_fifo = match value {
                        "null" => false,
                        "fifo" => true,
                        _ => return Err(invalid("expected null or fifo")),
                    }
                }
                "TTY" => {
                    unit.tty = match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(invalid("expected yes or no")),
                    }
                }
                "Restart" => {
                    unit.restart = match value {
                        "no" => Restart::No,
                        "on-failure" => Restart::OnFailure,
                        "always" => Restart::Always,
                        _ => return Err(invalid("expected no, on-failure or always")),
                    }
                }
                "NoNewPrivileges" => {
                    unit.no_new_privileges = match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(invalid("expected yes or no")),
                    }
                }
                "PIDNamespace" => {
                    unit.own_pid = match value {
                        "pod" => false,
                        "own" => true,
                        _ => return Err(invalid("expected pod or own")),
                    }
                }
                "SupplementaryGroupsPolicy" => {
                    unit.image_groups = match value {
                        "merge" => true,
                        "strict" => false,
                        _ => return Err(invalid("expected merge or strict")),
                    }
                }
                "RestartSec" => unit.restart_sec = duration(false)?,
                "TimeoutStopSec" => unit.timeout_stop = duration(true)?,
                "TimeoutStartSec" => unit.timeout_start = duration(true)?,
                "KillSignal" => {
                    unit.kill_signal = signal_number(value)
                        .ok_or_else(|| invalid("expected a signal name (SIGQUIT) or number (1-64)"))?;
                }
                "OOMScoreAdjust" => {
                    let adj = value.parse::<i32>().ok().filter(|n| (-1000..=1000).contains(n));
                    unit.oom_score_adjust = Some(adj.ok_or_else(|| invalid("expected a number from -1000 to 1000"))?);
                }
                "MemoryMax" | "TasksMax" | "CPUQuota" | "CPUWeight" => unit.limits.set(key, value).map_err(invalid)?,
                "ReadinessTimeoutSec" => readiness_timeout = Some((duration(true)?, lineno, value)),
                "ReadinessTCP" => {
                    readiness_check = Some(ReadinessCheck::Tcp(
                        tcp_addr(value)
                            .ok_or_else(|| invalid("expected PORT (meaning 127.0.0.1:PORT) or ADDR:PORT"))?,
                    ))
                }
                // Every key in `known` has an arm above.
                _ => return Err(fail(UnitErrorKind::UnknownKey("Service"))),
            }
            if seen.contains(&"ReadinessTCP") && seen.contains(&"ReadinessExec") {
                return Err(invalid("ReadinessTCP and ReadinessExec exclude each other"));
            }
        }
        if unit.exec_start.is_empty() {
            return Err(err(None, None, UnitErrorKind::Missing("ExecStart in [Service]")));
        }
        unit.readiness = match (readiness_check, readiness_timeout) {
            (Some(check), timeout) => {
                Some(Readiness { check, timeout: timeout.map_or(DEFAULT_READINESS_TIMEOUT, |(t, _, _)| t) })
            }
            (None, Some((_, line, value))) => {
                let why = "needs ReadinessTCP or ReadinessExec";
                let kind = UnitErrorKind::Invalid { value: value.to_owned(), why };
                return Err(err(line, Some("ReadinessTimeoutSec"), kind));
            }
            (None, None) => None,
        };
        Ok(unit)
    }

    /// Renders the unit; [`Unit::parse`] reads it back equal. The
    /// description is trimmed and kept to one line.
    pub fn render(&self) -> String {
        fn line(out: &mut String, key: &str, value: &str) {
            out.push_str(key);
            out.push('=');
            out.push_str(value);
            out.push('\n');
        }
        let mut out = String::from("[Unit]\n");
        if let Some(description) = &self.description {
            line(&mut out, "Description", description.replace(['\n', '\r'], " ").trim());
        }
        if !self.after.is_empty() {
            line(&mut out, "After", &join_words(&self.after));
        }
        if !self.requires.is_empty() {
            line(&mut out, "Requires", &join_words(&self.requires));
        }
        out.push_str("[Service]\n");
        if let Some(argv) = &self.exec_start_pre {
            line(&mut out, "ExecStartPre", &join_words(argv));
        }
        line(&mut out, "ExecStart", &join_words(&self.exec_start));
        if let Some(argv) = &self.exec_stop_post {
            line(&mut out, "ExecStopPost", &join_words(argv));
        }
        for (name, value) in &self.environment {
            line(&mut out, "Environment", &quote_word(&format!("{name}={value}")));
        }
        let optional = [("WorkingDirectory", &self.working_directory), ("User", &self.user), ("Group", &self.group)];
        for (key, value) in optional {
            if let Some(value) = value {
                line(&mut out, key, value);
            }
        }
        if !self.supplementary_groups.is_empty() {
            line(&mut out, "SupplementaryGroups", &join_words(&self.supplementary_groups));
        }
        let restart = match self.restart {
            Restart::No => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        };
        line(&mut out, "Restart", restart);
        line(&mut out, "RestartSec", &render_duration(self.restart_sec));
        line(&mut out, "TimeoutStopSec", &render_duration(self.timeout_stop));
        if self.timeout_start != DEFAULT_TIMEOUT_START {
            line(&mut out, "TimeoutStartSec", &render_duration(self.timeout_start));
        }
        if self.kill_signal != SIGTERM {
            line(&mut out, "KillSignal", &self.kill_signal.to_string());
        }
        if let Some(adj) = self.oom_score_adjust {
            line(&mut out, "OOMScoreAdjust", &adj.to_string());
        }
        for (key, value) in self.limits.render() {
            line(&mut out, key, &value);
        }
        if !self.no_new_privileges {
            line(&mut out, "NoNewPrivileges", "no");
        }
        out.push_str("[X-Pod]\n");
        if !self.cgroups.is_empty() {
            line(&mut out, "Cgroup", &join_words(&self.cgroups));
        }
        line(&mut out, "Capabilities", &self.capabilities.to_string());
        if !self.seccomp_filters.is_empty() {
            line(&mut out, "SeccompFilter", &join_words(&self.seccomp_filters));
        }
        if !self.shared_mounts.is_empty() {
            line(&mut out, "SharedMounts", &join_words(&self.shared_mounts));
        }
        if !self.image_groups {
            line(&mut out, "SupplementaryGroupsPolicy", "strict");
        }
        if self.own_pid {
            line(&mut out, "PIDNamespace", "own");
        }
        if let Some(path) = &self.log_path {
            line(&mut out, "LogPath", path);
        }
        if self.log_format != LogFormat::Raw {
            line(&mut out, "LogFormat", self.log_format.as_str());
        }
        if self.stdin_fifo {
            line(&mut out, "Stdin", "fifo");
        }
        if self.tty {
            line(&mut out, "TTY", "yes");
        }
        if let Some(readiness) = &self.readiness {
            match &readiness.check {
                ReadinessCheck::Tcp(addr) if addr.ip() == Ipv4Addr::LOCALHOST => {
                    line(&mut out, "ReadinessTCP", &addr.port().to_string())
                }
                ReadinessCheck::Tcp(addr) => line(&mut out, "ReadinessTCP", &addr.to_string()),
                ReadinessCheck::Exec(argv) => line(&mut out, "ReadinessExec", &join_words(argv)),
            }
            line(&mut out, "ReadinessTimeoutSec", &render_duration(readiness.timeout));
        }
        out
    }
}

#[cfg(test)]
mod tests;
