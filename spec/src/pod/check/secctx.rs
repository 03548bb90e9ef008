//! The pod file's security keys beyond capabilities: an app's `seccomp`
//! (a profile path too), `supplementaryGroups`, `supplementaryGroupsPolicy`,
//! `noNewPrivileges`, `maskedPaths`, `readonlyPaths`, `privileged`,
//! `pidNamespace`; the pod's `pid` and `ipc` namespaces; and what
//! `userns: auto` cannot go with.

use super::{raw, Cx, FieldPath, Result};
use crate::pod::{Isolation, UserNs};
use crate::security::{AppSecurity, GroupsPolicy, SeccompSpec};

impl Cx<'_> {
    pub(super) fn seccomp(&self, field: &FieldPath, s: Option<&str>) -> Result<SeccompSpec> {
        match s {
            None | Some("default") => Ok(SeccompSpec::Default),
            Some("unconfined") => Ok(SeccompSpec::Unconfined),
            Some(p) if p.starts_with('/') => {
                self.abs_path(field, p)?;
                Ok(SeccompSpec::Localhost(p.to_owned()))
            }
            Some(o) => Err(self.invalid(
                field,
                format!("{o:?} is not default, unconfined or the absolute path of an OCI seccomp profile"),
            )),
        }
    }

    pub(super) fn app_security(&self, path: &FieldPath, a: &raw::App) -> Result<AppSecurity> {
        let groups = path.key("supplementaryGroups");
        self.count(&groups, a.supplementary_groups.len(), super::MAX_ENTRIES)?;
        let supplementary_groups = a
            .supplementary_groups
            .iter()
            .enumerate()
            .map(|(i, g)| g.parse::<u32>().map_err(|_| self.invalid(&groups.index(i), format!("{g:?} is not a gid"))))
            .collect::<Result<Vec<u32>>>()?;
        let groups_policy = match a.supplementary_groups_policy.as_deref() {
            None | Some("merge") => GroupsPolicy::Merge,
            Some("strict") => GroupsPolicy::Strict,
            Some(o) => {
                let field = path.key("supplementaryGroupsPolicy");
                return Err(self.invalid(&field, format!("{o:?} is not merge or strict")));
            }
        };
        let mut lists = [("maskedPaths", &a.masked_paths), ("readonlyPaths", &a.readonly_paths)].into_iter().map(
            |(key, list)| -> Result<Option<Vec<String>>> {
                let Some(list) = list else { return Ok(None) };
                let field = path.key(key);
                self.count(&field, list.len(), super::MAX_ENTRIES)?;
                for (i, p) in list.iter().enumerate() {
                    self.abs_path(&field.index(i), p)?;
                }
                Ok(Some(list.clone()))
            },
        );
        let masked_paths = lists.next().transpose()?.flatten();
        let readonly_paths = lists.next().transpose()?.flatten();
        let own_pid_namespace = match a.pid_namespace.as_deref() {
            None | Some("pod") => false,
            Some("own") => true,
            Some(o) => return Err(self.invalid(&path.key("pidNamespace"), format!("{o:?} is not pod or own"))),
        };
        Ok(AppSecurity {
            supplementary_groups,
            groups_policy,
            no_new_privileges: a.no_new_privileges.unwrap_or(true),
            masked_paths,
            readonly_paths,
            privileged: a.privileged,
            own_pid_namespace,
        })
    }

    /// `pid: host` and `ipc: host`: namespace pods only, not with a user
    /// namespace of the pod's own (the host's namespaces are not its).
    pub(super) fn host_namespaces(&self, raw: &raw::Pod, isolation: Isolation, userns: UserNs) -> Result<(bool, bool)> {
        let root = FieldPath::default();
        let mut out = [false; 2];
        for (slot, (key, value)) in out.iter_mut().zip([("pid", &raw.pid), ("ipc", &raw.ipc)]) {
            *slot = match value.as_deref() {
                None | Some("pod") => false,
                Some("host") => true,
                Some(o) => return Err(self.invalid(&root.key(key), format!("{o:?} is not pod or host"))),
            };
            if *slot && isolation == Isolation::Vm {
                let m = format!("{key}: host is for namespace pods; a VM pod has its own kernel");
                return Err(self.invalid(&root.key(key), m));
            }
            if *slot && userns.own() {
                let m = format!("{key}: host cannot go with userns: auto (the host's namespace is not the pod's)");
                return Err(self.invalid(&root.key(key), m));
            }
        }
        Ok((out[0], out[1]))
    }
}

impl Cx<'_> {
    /// `userns`: `host` (default), `auto`, or an explicit mapping of the
    /// pod's ids from 0 (`{ uid: { container: 0, host: ID, size: N }, gid:
    /// ... }`): one range each, the same size, host root outside it.
    pub(super) fn userns(&self, raw: Option<&raw::Userns>) -> Result<UserNs> {
        let field = FieldPath::default().key("userns");
        let map = match raw {
            None => return Ok(UserNs::Host),
            Some(raw::Userns::Word(w)) if w == "host" => return Ok(UserNs::Host),
            Some(raw::Userns::Word(w)) if w == "auto" => return Ok(UserNs::Auto),
            Some(raw::Userns::Word(o)) => {
                return Err(self.invalid(&field, format!("{o:?} is not host, auto or a mapping {{ uid, gid }}")))
            }
            Some(raw::Userns::Map(m)) => m,
        };
        let mut ranges = [(0u32, 0u32); 2];
        for (slot, (key, r)) in ranges.iter_mut().zip([("uid", &map.uid), ("gid", &map.gid)]) {
            let at = field.key(key);
            let number = |k: &str, v: &str| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| self.invalid(&at.key(k), format!("{v:?} is not an id (0-4294967294)")))
            };
            if number("container", &r.container)? != 0 {
                let m = "only a range from the pod's id 0 is supported: container: 0";
                return Err(self.invalid(&at.key("container"), m));
            }
            let (host, size) = (number("host", &r.host)?, number("size", &r.size)?);
            if size == 0 {
                return Err(self.invalid(&at.key("size"), "an empty range maps nothing"));
            }
            if host == 0 {
                let m = "the range holds host id 0: the pod's root would be the host's (userns: host says so)";
                return Err(self.invalid(&at.key("host"), m));
            }
            if u64::from(host) + u64::from(size) > u64::from(u32::MAX) {
                let m = format!("{host} + {size} passes the last valid host id 4294967294");
                return Err(self.invalid(&at.key("size"), m));
            }
            *slot = (host, size);
        }
        let [(uid, size), (gid, gid_size)] = ranges;
        if gid_size != size {
            let m = format!("the gid range's size ({gid_size}) must be the uid range's ({size})");
            return Err(self.invalid(&field.key("gid").key("size"), m));
        }
        Ok(UserNs::Map(crate::stage1::IdMap { uid, gid, size }))
    }

    /// `pidNamespace: own` mounts a /proc of the app's namespace, which a
    /// user namespace's root may only do where a whole /proc is in sight;
    /// an app's is masked, so not with `userns: auto`.
    pub(super) fn own_pid_with_userns(&self, pod: &crate::pod::PodFile) -> Result<()> {
        if !pod.userns.own() {
            return Ok(());
        }
        match pod.apps.iter().position(|a| a.security.own_pid_namespace) {
            Some(i) => Err(self.invalid(
                &FieldPath::default().at("apps", i).key("pidNamespace"),
                "pidNamespace: own cannot go with userns: auto (not yet)",
            )),
            None => Ok(()),
        }
    }
}

/// Why `userns: auto` cannot go with this isolation and network, if it
/// cannot. stage0 asks again after the command line's overrides.
pub fn userns_conflict(vm: bool, host_network: bool) -> Option<&'static str> {
    match (vm, host_network) {
        (true, _) => Some("userns: auto is for namespace pods; a VM pod is isolated by its own kernel"),
        (_, true) => Some(
            "userns: auto cannot share the host's network namespace: the pod's root could neither bind ports \
             below 1024 nor mount its /sys there",
        ),
        _ => None,
    }
}
