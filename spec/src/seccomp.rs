//! A seccomp profile in the OCI runtime spec's JSON (`linux.seccomp`), as
//! Kubernetes' `seccompProfile: {type: Localhost}` and Docker's
//! `--security-opt seccomp=FILE` give them: a default action and rules of
//! syscall names, an action and optional argument conditions. Parsed and
//! checked here (no I/O); stage0 reads the file when the pod is prepared
//! and freezes the profile into `pod.json`; stage1 compiles it to BPF
//! (stage1-ns/src/seccomp_oci.rs).
//!
//! What is refused rather than dropped: `SCMP_ACT_NOTIFY` (no listener),
//! `listenerPath`, and Docker's per-rule `includes`/`excludes` (conditions
//! on capabilities and kernel versions that only Docker evaluates).
//! `architectures` and `archMap` are read but only the host's native
//! architecture is filtered (others are killed, as the default profile
//! does); `flags` are accepted and not applied.

use serde::{Deserialize, Serialize};

/// The largest profile file read.
pub const MAX_PROFILE_BYTES: usize = 1024 * 1024;

/// A checked OCI seccomp profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciSeccomp {
    pub default_action: Action,
    /// The errno of a default `SCMP_ACT_ERRNO`/`SCMP_ACT_TRACE`; EPERM when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}

/// One rule: these syscalls, under these conditions (all must hold), get
/// this action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgCondition>,
}

/// A condition on one syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgCondition {
    /// 0-5.
    pub index: u8,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: CmpOp,
}

/// `SCMP_ACT_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    #[serde(rename = "SCMP_ACT_KILL", alias = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
}

/// `SCMP_CMP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

/// The file's shape, with the fields read only to be refused or ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    arch_map: Option<serde_json::Value>,
    #[serde(default)]
    flags: Option<Vec<String>>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Option<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    names: Vec<String>,
    /// Docker's older single-name form.
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<RawArg>>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    includes: Option<serde_json::Value>,
    #[serde(default)]
    excludes: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

fn action(s: &str) -> Result<Action, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        if s == "SCMP_ACT_NOTIFY" {
            "SCMP_ACT_NOTIFY needs a seccomp agent; pod has none".to_owned()
        } else {
            format!("{s:?} is not a seccomp action (SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, ...)")
        }
    })
}

fn is_empty_json(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Object(m)) => m.values().all(|x| is_empty_json(&Some(x.clone()))),
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        Some(serde_json::Value::String(s)) => s.is_empty(),
        Some(_) => false,
    }
}

impl OciSeccomp {
    /// Parses and checks a profile file's bytes; the message names the
    /// rule (`syscalls[3]`) where one is at fault.
    pub fn parse(bytes: &[u8]) -> Result<OciSeccomp, String> {
        if bytes.len() > MAX_PROFILE_BYTES {
            return Err(format!("{} bytes; the limit is {MAX_PROFILE_BYTES}", bytes.len()));
        }
        let raw: RawProfile = serde_json::from_slice(bytes).map_err(|e| format!("not an OCI seccomp profile: {e}"))?;
        let _ignored = (&raw.architectures, &raw.arch_map, &raw.flags, &raw.listener_metadata);
        if raw.listener_path.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err("listenerPath: a seccomp agent is not supported".into());
        }
        let default_action = action(&raw.default_action).map_err(|e| format!("defaultAction: {e}"))?;
        let mut syscalls = Vec::new();
        for (i, r) in raw.syscalls.unwrap_or_default().into_iter().enumerate() {
            let at = |m: String| format!("syscalls[{i}]: {m}");
            let _comment = &r.comment;
            if !is_empty_json(&r.includes) || !is_empty_json(&r.excludes) {
                return Err(at("includes/excludes (Docker's conditions on capabilities and kernels) are not \
                               supported; list the rules that apply"
                    .into()));
            }
            let mut names = r.names;
            names.extend(r.name);
            if names.is_empty() {
                return Err(at("no syscall names".into()));
            }
            if let Some(bad) =
                names.iter().find(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            {
                return Err(at(format!("{bad:?} is not a syscall name")));
            }
            let action = action(&r.action).map_err(at)?;
            let mut args = Vec::new();
            for (j, a) in r.args.unwrap_or_default().into_iter().enumerate() {
                if a.index > 5 {
                    return Err(at(format!("args[{j}]: index {} is not 0-5", a.index)));
                }
                let op = serde_json::from_value(serde_json::Value::String(a.op.clone()))
                    .map_err(|_| at(format!("args[{j}]: {:?} is not an SCMP_CMP_ operator", a.op)))?;
                args.push(ArgCondition { index: a.index, value: a.value, value_two: a.value_two, op });
            }
            syscalls.push(SyscallRule { names, action, errno_ret: r.errno_ret, args });
        }
        Ok(OciSeccomp { default_action, default_errno_ret: raw.default_errno_ret, syscalls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critest_profiles_parse() {
        let p = OciSeccomp::parse(
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .expect("profile");
        assert_eq!(p.default_action, Action::Allow);
        assert_eq!(p.syscalls[0].names, ["chmod", "fchmodat"]);
        assert_eq!(p.syscalls[0].action, Action::Errno);
        let json = serde_json::to_string(&p).expect("json");
        assert_eq!(serde_json::from_str::<OciSeccomp>(&json).expect("back"), p);
    }

    #[test]
    fn arguments_and_errors() {
        let p = OciSeccomp::parse(
            br#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["personality"],"action":"SCMP_ACT_ALLOW",
                "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}],"comment":"x","includes":{},"excludes":{}}]}"#,
        )
        .expect("profile");
        assert_eq!(p.syscalls[0].args[0], ArgCondition { index: 0, value: 8, value_two: 0, op: CmpOp::Eq });
        let err = |t: &str| OciSeccomp::parse(t.as_bytes()).expect_err(t);
        assert!(err(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).contains("seccomp agent"));
        assert!(err(r#"{"defaultAction":"ALLOW"}"#).contains("defaultAction"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":[],"action":"SCMP_ACT_ERRNO"}]}"#)
            .starts_with("syscalls[0]"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#)
            .contains("index 6"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ERRNO","includes":{"caps":["CAP_SYS_ADMIN"]}}]}"#)
            .contains("includes"));
        assert!(err("not json").contains("not an OCI seccomp profile"));
    }
}
