//! `User=`, `Group=` and `SupplementaryGroups=` resolved against the app's
//! own `/etc/passwd` and `/etc/group`, parsed here: pod-init is static and
//! must not use NSS, and the host's accounts mean nothing inside an image.

/// Who an app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary group first.
    pub groups: Vec<u32>,
    /// The account name, when the uid has a passwd entry.
    pub name: Option<String>,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredsError {
    #[error("user {0:?} is not in the app's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} is not in the app's /etc/group")]
    UnknownGroup(String),
    #[error("{0:?} is not a valid numeric id")]
    BadId(String),
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn records(text: &str, fields: usize) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(move |f| f.len() >= fields)
}

fn passwd(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    records(text, 7)
        .filter_map(|f| Some(Passwd { name: f[0], uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5] }))
}

fn groups(text: &str) -> impl Iterator<Item = Group<'_>> {
    records(text, 4).filter_map(|f| Some(Group { name: f[0], gid: f[2].parse().ok()?, members: f[3] }))
}

fn numeric(s: &str) -> Option<Result<u32, CredsError>> {
    s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().map_err(|_| CredsError::BadId(s.to_owned())))
}

fn group_id(spec: &str, group_file: &str) -> Result<u32, CredsError> {
    match numeric(spec) {
        Some(id) => id,
        None => groups(group_file)
            .find(|g| g.name == spec)
            .map(|g| g.gid)
            .ok_or_else(|| CredsError::UnknownGroup(spec.to_owned())),
    }
}

/// Resolves a unit's user and groups. A numeric user needs no passwd entry
/// (home `/`, group 0 unless given); a name must have one. The groups are
/// the primary group, every group listing the user as a member, and `extra`.
pub fn resolve(
    user: Option<&str>,
    group: Option<&str>,
    extra: &[String],
    passwd_file: &str,
    group_file: &str,
) -> Result<Creds, CredsError> {
    resolve_with(user, group, extra, passwd_file, group_file, true)
}

/// [`resolve`]; `image_groups: false` (`SupplementaryGroupsPolicy=strict`)
/// leaves out the groups that list the user as a member.
pub fn resolve_with(
    user: Option<&str>,
    group: Option<&str>,
    extra: &[String],
    passwd_file: &str,
    group_file: &str,
    image_groups: bool,
) -> Result<Creds, CredsError> {
    let spec = user.unwrap_or("0");
    let (uid, entry) = match numeric(spec) {
        Some(uid) => {
            let uid = uid?;
            (uid, passwd(passwd_file).find(|p| p.uid == uid))
        }
        None => {
            let p = passwd(passwd_file).find(|p| p.name == spec).ok_or_else(|| CredsError::UnknownUser(spec.into()))?;
            (p.uid, Some(p))
        }
    };
    let gid = match group {
        Some(g) => group_id(g, group_file)?,
        None => entry.as_ref().map_or(0, |p| p.gid),
    };
    let mut wanted = vec![gid];
    if let (Some(p), true) = (&entry, image_groups) {
        wanted.extend(groups(group_file).filter(|g| g.members.split(',').any(|m| m.trim() == p.name)).map(|g| g.gid));
    }
    for g in extra {
        wanted.push(group_id(g, group_file)?);
    }
    let mut all = Vec::with_capacity(wanted.len());
    for g in wanted {
        if !all.contains(&g) {
            all.push(g);
        }
    }
    Ok(Creds {
        uid,
        gid,
        groups: all,
        name: entry.as_ref().map(|p| p.name.to_owned()),
        home: entry.as_ref().map(|p| p.home).filter(|h| !h.is_empty()).unwrap_or("/").to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\n+nis\nredis:x:100:101:Redis:/var/lib/redis:/bin/false\nnohome:x:7:7:::\n";
    const GROUP: &str = "root:x:0:\nredis:x:101:\naudio:x:29:redis,other\nvideo:x:44:other\nbad:x:zz:redis\n";

    fn ok(user: Option<&str>, group: Option<&str>, extra: &[&str]) -> Creds {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        resolve(user, group, &extra, PASSWD, GROUP).expect("resolve")
    }

    #[test]
    fn by_name_with_membership() {
        let c = ok(Some("redis"), None, &[]);
        assert_eq!((c.uid, c.gid, c.groups.as_slice()), (100, 101, &[101, 29][..]));
        assert_eq!((c.name.as_deref(), c.home.as_str()), (Some("redis"), "/var/lib/redis"));
        let c = ok(Some("redis"), Some("video"), &["44", "audio", "5"]);
        assert_eq!((c.gid, c.groups.as_slice()), (44, &[44, 29, 5][..]));
    }

    #[test]
    fn numeric_and_defaults() {
        let c = ok(None, None, &[]);
        assert_eq!((c.uid, c.gid, c.name.as_deref(), c.home.as_str()), (0, 0, Some("root"), "/root"));
        let c = ok(Some("100"), None, &[]);
        assert_eq!((c.uid, c.gid, c.name.as_deref()), (100, 101, Some("redis")));
        let c = ok(Some("4242"), Some("4343"), &[]);
        assert_eq!((c.uid, c.gid, c.name, c.home.as_str()), (4242, 4343, None, "/"));
        assert_eq!(ok(Some("7"), None, &[]).home, "/");
        let c = resolve(Some("1000"), None, &[], "", "").expect("no files");
        assert_eq!((c.uid, c.gid, c.groups), (1000, 0, vec![0]));
    }

    #[test]
    fn strict_policy_leaves_out_memberships() {
        let extra = ["1234".to_owned()];
        let c = resolve_with(Some("redis"), None, &extra, PASSWD, GROUP, false).expect("resolve");
        assert_eq!(c.groups, [101, 1234]);
        let c = resolve_with(Some("redis"), None, &extra, PASSWD, GROUP, true).expect("resolve");
        assert_eq!(c.groups, [101, 29, 1234]);
    }

    #[test]
    fn errors() {
        let err = |u: Option<&str>, g: Option<&str>| resolve(u, g, &[], PASSWD, GROUP).map(|_| ()).expect_err("error");
        assert_eq!(err(Some("nobody"), None), CredsError::UnknownUser("nobody".into()));
        assert_eq!(err(Some("redis"), Some("wheel")), CredsError::UnknownGroup("wheel".into()));
        assert_eq!(err(Some("99999999999"), None), CredsError::BadId("99999999999".into()));
        assert_eq!(err(Some("nis"), None), CredsError::UnknownUser("nis".into()));
    }
}
