//! OCI seccomp profiles (`seccomp: /path.json`, Kubernetes' Localhost
//! profiles; see `spec::seccomp`) compiled with seccompiler into the raw
//! programs pod-init installs, like the default profile (seccomp.rs).
//!
//! A seccompiler filter has one action for every match, a profile one per
//! rule; the kernel runs every installed filter and keeps the most
//! restrictive answer. So each action of the profile other than the
//! default gets a filter of its own (its rules → that action, anything
//! else → allow), and one last filter gives the default action to every
//! call that no rule matches (every rule → allow, anything else → the
//! default). A call a rule matches gets the rule's action from its filter
//! and allow from the others; any other call gets allow from all but the
//! last. Syscall names this architecture does not have are skipped, as
//! runc and libseccomp do; on x86-64 the x32 twin of each call is matched
//! too.

use std::collections::BTreeMap;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use spec::seccomp::{Action, ArgCondition, CmpOp, OciSeccomp};

/// EPERM: the errno of `SCMP_ACT_ERRNO` without `errnoRet`, as runc.
const EPERM: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("seccomp profile for {arch}: {source}")]
    Compile {
        arch: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
}

fn action(a: Action, errno: Option<u32>) -> SeccompAction {
    let errno = errno.unwrap_or(EPERM);
    match a {
        Action::Allow => SeccompAction::Allow,
        Action::Errno => SeccompAction::Errno(errno),
        Action::KillThread => SeccompAction::KillThread,
        Action::KillProcess => SeccompAction::KillProcess,
        Action::Trap => SeccompAction::Trap,
        Action::Trace => SeccompAction::Trace(errno),
        Action::Log => SeccompAction::Log,
    }
}

/// A key to group rules by action (SeccompAction is not Ord).
fn key(a: &SeccompAction) -> (u8, u32) {
    match a {
        SeccompAction::Allow => (0, 0),
        SeccompAction::Errno(e) => (1, *e),
        SeccompAction::KillThread => (2, 0),
        SeccompAction::KillProcess => (3, 0),
        SeccompAction::Trap => (4, 0),
        SeccompAction::Trace(e) => (5, *e),
        SeccompAction::Log => (6, 0),
    }
}

fn condition(c: &ArgCondition) -> Result<SeccompCondition, seccompiler::BackendError> {
    let (op, value) = match c.op {
        CmpOp::Ne => (SeccompCmpOp::Ne, c.value),
        CmpOp::Lt => (SeccompCmpOp::Lt, c.value),
        CmpOp::Le => (SeccompCmpOp::Le, c.value),
        CmpOp::Eq => (SeccompCmpOp::Eq, c.value),
        CmpOp::Ge => (SeccompCmpOp::Ge, c.value),
        CmpOp::Gt => (SeccompCmpOp::Gt, c.value),
        // OCI: (arg & value) == valueTwo.
        CmpOp::MaskedEq => (SeccompCmpOp::MaskedEq(c.value), c.value_two),
    };
    SeccompCondition::new(c.index, SeccompCmpArgLen::Qword, op, value)
}

/// Adds `rule` (none: unconditional) for `nr` to `rules`; an unconditional
/// match absorbs every conditional one.
fn add(rules: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: i64, rule: Option<SeccompRule>, unconditional: &mut Vec<i64>) {
    if unconditional.contains(&nr) {
        return;
    }
    match rule {
        None => {
            unconditional.push(nr);
            rules.insert(nr, Vec::new());
        }
        Some(r) => rules.entry(nr).or_default().push(r),
    }
}

/// The profile's programs, in install order, as `struct sock_filter` bytes.
/// None at all for a profile that allows everything.
pub fn compile(profile: &OciSeccomp) -> Result<Vec<Vec<u8>>, ProfileError> {
    let arch = std::env::consts::ARCH;
    let err = |source| ProfileError::Compile { arch, source };
    let target = TargetArch::try_from(arch).map_err(err)?;
    let default = action(profile.default_action, profile.default_errno_ret);

    type Rules = BTreeMap<i64, Vec<SeccompRule>>;
    let mut by_action: BTreeMap<(u8, u32), (SeccompAction, Rules, Vec<i64>)> = BTreeMap::new();
    let (mut matched, mut matched_unconditional): (Rules, Vec<i64>) = (BTreeMap::new(), Vec::new());
    for r in &profile.syscalls {
        let act = action(r.action, r.errno_ret);
        if key(&act) == key(&default) {
            continue;
        }
        let conditions = r.args.iter().map(condition).collect::<Result<Vec<_>, _>>().map_err(err)?;
        let rule = || {
            if conditions.is_empty() {
                Ok(None)
            } else {
                SeccompRule::new(conditions.clone()).map(Some)
            }
        };
        for name in &r.names {
            let Ok(sysno) = syscalls::Sysno::from_str(name) else { continue };
            for nr in crate::seccomp::with_x32(i64::from(sysno.id())) {
                if act != SeccompAction::Allow {
                    let slot = by_action.entry(key(&act)).or_insert_with(|| (act.clone(), Rules::new(), Vec::new()));
                    add(&mut slot.1, nr, rule().map_err(err)?, &mut slot.2);
                }
                add(&mut matched, nr, rule().map_err(err)?, &mut matched_unconditional);
            }
        }
    }
    let mut filters = Vec::new();
    for (_, (act, rules, _)) in by_action {
        filters.push(SeccompFilter::new(rules, SeccompAction::Allow, act, target).map_err(err)?);
    }
    if default != SeccompAction::Allow {
        filters.push(SeccompFilter::new(matched, default, SeccompAction::Allow, target).map_err(err)?);
    }
    filters.into_iter().map(|f| BpfProgram::try_from(f).map(|p| crate::seccomp::to_bytes(&p)).map_err(err)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> OciSeccomp {
        OciSeccomp::parse(json.as_bytes()).expect("profile")
    }

    #[test]
    fn one_filter_per_action_and_one_for_the_default() {
        let allow_all = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#);
        assert!(compile(&allow_all).expect("compile").is_empty());
        let deny = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat","no_such_call"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(compile(&deny).expect("compile").len(), 1);
        let allow_list = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                {"names":["kill"],"action":"SCMP_ACT_KILL_PROCESS"},
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        );
        let programs = compile(&allow_list).expect("compile");
        assert_eq!(programs.len(), 3, "kill, errno 13, and the default");
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() % 8 == 0));
    }
}
