//! Finishing the staged root filesystem once packages are unpacked: what
//! maintainer scripts would have done (accounts, /tmp, /bin/sh), the recipe's
//! directories and files, and optionally clamped timestamps.
//!
//! Paths from packages may be symlinks, even absolute ones (`/var/run ->
//! /run`). Nothing here follows a symlink inside the rootfs: that would write
//! to the host. A recipe path through one is refused instead.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use tracing::info;

use super::recipe::{invalid, DirSpec, Recipe};
use super::{io_err, BuildError};

/// Accounts every image has, as in Debian's base-passwd.
const BASE_PASSWD: [&str; 2] =
    ["root:x:0:0:root:/root:/bin/sh", "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"];
const BASE_GROUP: [&str; 2] = ["root:x:0:", "nogroup:x:65534:"];

/// Runs every finishing step, in the order the recipe documents.
pub(super) fn finish(recipe: &Recipe, rootfs: &Path, source_date_epoch: Option<u64>) -> Result<(), BuildError> {
    write_accounts(recipe, rootfs)?;
    ensure_tmp(rootfs)?;
    link_sh(rootfs)?;
    make_dirs(recipe, rootfs)?;
    if let Some(dir) = recipe.rootfs_dir() {
        if !dir.is_dir() {
            return Err(invalid(&recipe.path, "rootfs.dir", format!("{} is not a directory", dir.display())));
        }
        info!(dir = %dir.display(), "copying rootfs.dir");
        copy_tree(recipe, &dir, rootfs)?;
    }
    check_app_identity(recipe, rootfs)?;
    if let Some(epoch) = source_date_epoch {
        clamp_mtimes(rootfs, epoch)?;
    }
    Ok(())
}

/// `rootfs` joined with the image path `p`, or the image path of the first
/// existing component that is a symlink.
fn join_inside(rootfs: &Path, p: &str) -> Result<PathBuf, String> {
    let (mut cur, mut shown) = (rootfs.to_path_buf(), String::new());
    for c in p.split('/').filter(|c| !c.is_empty() && *c != ".") {
        cur.push(c);
        shown = format!("{shown}/{c}");
        if fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(shown);
        }
    }
    Ok(cur)
}

fn symlink_refused(recipe: &Recipe, field: &str, link: &str) -> BuildError {
    invalid(&recipe.path, field, format!("{link} is a symlink in the image; name its target instead"))
}

/// Merges account files: `base`, then the lines of `existing`, then `ours`;
/// a line replaces an earlier one with the same name, in its place.
fn merge_accounts(base: &[&str], existing: &str, ours: &[String]) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let existing = existing.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#'));
    for line in base.iter().copied().chain(existing).chain(ours.iter().map(String::as_str)) {
        let name = line.split(':').next().unwrap_or_default();
        match lines.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => line.clone_into(&mut slot.1),
            None => lines.push((name.to_owned(), line.to_owned())),
        }
    }
    lines.into_iter().map(|(_, l)| l + "\n").collect()
}

/// The fields of the account line whose name is `key`, or whose ID (field
/// `id_field`) is `key` when `key` is numeric.
fn find_account<'a>(content: &'a str, key: &str, id_field: usize) -> Option<Vec<&'a str>> {
    let numeric = !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit());
    content
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > id_field && (f[0] == key || (numeric && f[id_field] == key)))
}

fn read_optional(path: &Path) -> Result<String, BuildError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

/// Writes /etc/passwd and /etc/group, since no maintainer script runs to
/// add the users packages expect. Lines packages shipped are kept.
fn write_accounts(recipe: &Recipe, rootfs: &Path) -> Result<(), BuildError> {
    let paths = ["/etc/passwd", "/etc/group"].map(|p| join_inside(rootfs, p));
    let [Ok(passwd_path), Ok(group_path)] = paths else {
        let link = paths.into_iter().find_map(Result::err).unwrap_or_default();
        return Err(symlink_refused(recipe, "rootfs.users", &link));
    };
    let r = &recipe.rootfs;
    let users: Vec<String> =
        r.users.iter().map(|u| format!("{}:x:{}:{}::{}:{}", u.name, u.uid, u.gid, u.home, u.shell)).collect();
    let groups: Vec<String> = r
        .groups
        .iter()
        .map(|g| {
            format!("{}:x:{}:{}", g.name, g.gid, g.members.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","))
        })
        .collect();
    let passwd = merge_accounts(&BASE_PASSWD, &read_optional(&passwd_path)?, &users);
    let group = merge_accounts(&BASE_GROUP, &read_optional(&group_path)?, &groups);
    for (i, u) in r.users.iter().enumerate() {
        if find_account(&group, &u.gid.to_string(), 2).is_none() {
            let why = format!("no group has gid {}; add one to rootfs.groups", u.gid);
            return Err(invalid(&recipe.path, &format!("rootfs.users[{i}].gid"), why));
        }
    }
    let etc = rootfs.join("etc");
    fs::create_dir_all(&etc).map_err(io_err("creating", &etc))?;
    for (path, text) in [(passwd_path, passwd), (group_path, group)] {
        fs::write(&path, text).map_err(io_err("writing", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(io_err("chmod", &path))?;
    }
    Ok(())
}

/// /tmp, world-writable and sticky, as programs expect; left alone if a
/// package made it something other than a directory.
fn ensure_tmp(rootfs: &Path) -> Result<(), BuildError> {
    let tmp = rootfs.join("tmp");
    match fs::symlink_metadata(&tmp) {
        Ok(m) if !m.is_dir() => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => fs::create_dir(&tmp).map_err(io_err("creating", &tmp))?,
        Err(e) => return Err(io_err("inspecting", &tmp)(e)),
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(io_err("chmod", &tmp))
}

/// /bin/sh -> busybox when busybox is there and nothing else is /bin/sh:
/// busybox-static's postinst would not have made the link either.
fn link_sh(rootfs: &Path) -> Result<(), BuildError> {
    let Ok(bin) = join_inside(rootfs, "/bin") else { return Ok(()) };
    let sh = bin.join("sh");
    if fs::symlink_metadata(&sh).is_ok() {
        return Ok(());
    }
    for (found, target) in [("/bin/busybox", "busybox"), ("/usr/bin/busybox", "/usr/bin/busybox")] {
        let is_file = join_inside(rootfs, found).is_ok_and(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
        if is_file {
            fs::create_dir_all(&bin).map_err(io_err("creating", &bin))?;
            symlink(target, &sh).map_err(io_err("linking", &sh))?;
            info!(target, "linked /bin/sh to busybox");
            return Ok(());
        }
    }
    Ok(())
}

/// Creates `rootfs.dirs`: missing parents 0755 root, the directory itself
/// with its mode and owner.
fn make_dirs(recipe: &Recipe, rootfs: &Path) -> Result<(), BuildError> {
    let passwd = read_optional(&rootfs.join("etc/passwd"))?;
    let group = read_optional(&rootfs.join("etc/group"))?;
    for (i, d) in recipe.rootfs.dirs.iter().enumerate() {
        let field = format!("rootfs.dirs[{i}]");
        let (mut cur, mut shown) = (rootfs.to_path_buf(), String::new());
        for c in d.path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            cur.push(c);
            shown = format!("{shown}/{c}");
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(symlink_refused(recipe, &format!("{field}.path"), &shown))
                }
                Ok(_) => {
                    return Err(invalid(
                        &recipe.path,
                        &format!("{field}.path"),
                        format!("{shown} exists and is not a directory"),
                    ))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(io_err("creating", &cur))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", &cur))?;
                }
                Err(e) => return Err(io_err("inspecting", &cur)(e)),
            }
        }
        fs::set_permissions(&cur, fs::Permissions::from_mode(d.mode.0)).map_err(io_err("chmod", &cur))?;
        if let Some((uid, gid)) = resolve_owner(d, &passwd, &group).map_err(|why| invalid(&recipe.path, &field, why))? {
            chown(&cur, Some(uid), Some(gid)).map_err(io_err("chown", &cur))?;
        }
    }
    Ok(())
}

/// The uid and gid for a directory, `None` when the recipe names neither.
/// The group defaults to the owner's primary group (0 for a numeric owner
/// not in /etc/passwd).
fn resolve_owner(d: &DirSpec, passwd: &str, group: &str) -> Result<Option<(u32, u32)>, String> {
    if d.owner.is_none() && d.group.is_none() {
        return Ok(None);
    }
    let id = |s: &str| s.parse::<u32>().ok();
    let (uid, primary) = match d.owner.as_deref() {
        None => (0, 0),
        Some(o) => match (find_account(passwd, o, 2), id(o)) {
            (Some(f), _) => (id(f[2]).unwrap_or(0), f.get(3).and_then(|g| id(g)).unwrap_or(0)),
            (None, Some(n)) => (n, 0),
            (None, None) => return Err(format!("owner: no user {o:?} in the image's /etc/passwd")),
        },
    };
    let gid = match d.group.as_deref() {
        None => primary,
        Some(g) => match (find_account(group, g, 2), id(g)) {
            (Some(f), _) => id(f[2]).unwrap_or(0),
            (None, Some(n)) => n,
            (None, None) => return Err(format!("group: no group {g:?} in the image's /etc/group")),
        },
    };
    Ok(Some((uid, gid)))
}

/// Copies `src` over `dst`: files, directories (with their modes) and
/// symlinks (not followed), replacing what packages put there.
fn copy_tree(recipe: &Recipe, src: &Path, dst: &Path) -> Result<(), BuildError> {
    let refuse = |why: String| invalid(&recipe.path, "rootfs.dir", why);
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io_err("reading", src))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err("reading", src))?;
    entries.sort();
    for name in entries {
        let (s, d) = (src.join(&name), dst.join(&name));
        let meta = fs::symlink_metadata(&s).map_err(io_err("inspecting", &s))?;
        let existing = fs::symlink_metadata(&d).ok();
        if meta.is_dir() {
            match &existing {
                Some(m) if m.is_dir() => {}
                Some(m) if m.file_type().is_symlink() => {
                    return Err(refuse(format!("{} would be copied through a symlink in the image", s.display())));
                }
                Some(_) => fs::remove_file(&d).map_err(io_err("replacing", &d))?,
                None => {}
            }
            if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                fs::create_dir(&d).map_err(io_err("creating", &d))?;
            }
            fs::set_permissions(&d, meta.permissions()).map_err(io_err("chmod", &d))?;
            copy_tree(recipe, &s, &d)?;
            continue;
        }
        if !(meta.is_file() || meta.file_type().is_symlink()) {
            return Err(refuse(format!("{} is not a file, directory or symlink", s.display())));
        }
        match existing {
            Some(m) if m.is_dir() => return Err(refuse(format!("{} would replace a directory", s.display()))),
            Some(_) => fs::remove_file(&d).map_err(io_err("replacing", &d))?,
            None => {}
        }
        if meta.is_file() {
            fs::copy(&s, &d).map_err(io_err("copying to", &d))?;
        } else {
            let target = fs::read_link(&s).map_err(io_err("reading link", &s))?;
            symlink(&target, &d).map_err(io_err("linking", &d))?;
        }
    }
    Ok(())
}

/// The app's user and group, when they are names, must exist in the image:
/// a typo would otherwise surface only when the pod starts. Images with
/// dependencies get accounts from those too, so they are not checked.
fn check_app_identity(recipe: &Recipe, rootfs: &Path) -> Result<(), BuildError> {
    let Some(app) = recipe.app.as_ref().filter(|_| recipe.dependencies.is_empty()) else { return Ok(()) };
    for (field, value, file) in [("app.user", &app.user, "/etc/passwd"), ("app.group", &app.group, "/etc/group")] {
        let is_name = !value.starts_with('/') && !value.bytes().all(|b| b.is_ascii_digit());
        if !is_name {
            continue;
        }
        let content = match join_inside(rootfs, file) {
            Ok(p) => read_optional(&p)?,
            Err(_) => String::new(),
        };
        if find_account(&content, value, 2).is_none() {
            let why = format!("{value:?} is not in the image's {file}; add it to rootfs.users or rootfs.groups");
            return Err(invalid(&recipe.path, field, why));
        }
    }
    Ok(())
}

/// Sets every timestamp later than `epoch` to `epoch` (SOURCE_DATE_EPOCH
/// style), so files this build touched do not change the image ID.
fn clamp_mtimes(rootfs: &Path, epoch: u64) -> Result<(), BuildError> {
    let limit = FileTime::from_unix_time(i64::try_from(epoch).unwrap_or(i64::MAX), 0);
    let mut stack = vec![rootfs.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).map_err(io_err("inspecting", &path))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(io_err("reading", &path))? {
                stack.push(entry.map_err(io_err("reading", &path))?.path());
            }
        }
        if FileTime::from_last_modification_time(&meta) > limit {
            filetime::set_symlink_file_times(&path, limit, limit).map_err(io_err("setting times of", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::recipe::parse_str;
    use std::os::unix::fs::MetadataExt;

    fn recipe(dir: &Path, text: &str) -> Recipe {
        parse_str(&dir.join("recipe.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn accounts_merge_base_package_and_recipe_lines() {
        let packaged = "root:x:0:0:root:/root:/bin/bash\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\nredis:x:1:1::/:/bin/false\n";
        let ours = vec!["redis:x:100:101::/var/lib/redis:/usr/sbin/nologin".to_owned()];
        let got = merge_accounts(&BASE_PASSWD, packaged, &ours);
        assert_eq!(
            got,
            "root:x:0:0:root:/root:/bin/bash\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
             _apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n\
             redis:x:100:101::/var/lib/redis:/usr/sbin/nologin\n"
        );
        assert_eq!(find_account(&got, "100", 2).map(|f| f[0]), Some("redis"));
        assert_eq!(find_account(&got, "nobody", 2).map(|f| f[2]), Some("65534"));
    }

    #[test]
    fn finishes_a_fake_tree() {
        let (root, files) = (tempdir(), tempdir());
        let rootfs = root.path();
        fs::create_dir_all(rootfs.join("bin")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(rootfs.join("bin/busybox"), "elf").unwrap_or_else(|e| panic!("{e}"));
        fs::create_dir_all(files.path().join("etc")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(files.path().join("etc/motd"), "hi\n").unwrap_or_else(|e| panic!("{e}"));
        let text = format!(
            "name: example.com/x\napp: {{exec: [/bin/sh], user: redis, group: redis}}\nrootfs:\n  dir: {}\n  \
             users: [{{name: redis, uid: 100, gid: 101}}]\n  groups: [{{name: redis, gid: 101, members: [redis]}}]\n  \
             dirs: [{{path: /data/db, mode: \"0700\", owner: redis}}]\n",
            files.path().display()
        );
        let r = recipe(rootfs, &text);
        finish(&r, rootfs, Some(1_000_000)).unwrap_or_else(|e| panic!("{e}"));
        assert!(read(&rootfs.join("etc/passwd")).ends_with("redis:x:100:101::/:/usr/sbin/nologin\n"));
        assert!(read(&rootfs.join("etc/group")).contains("nogroup:x:65534:\nredis:x:101:redis\n"));
        assert_eq!(fs::read_link(rootfs.join("bin/sh")).ok(), Some(PathBuf::from("busybox")));
        assert_eq!(read(&rootfs.join("etc/motd")), "hi\n");
        let meta = |p: &str| fs::symlink_metadata(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
        assert_eq!(meta("data/db").mode() & 0o7777, 0o700);
        assert_eq!(meta("data").mode() & 0o7777, 0o755);
        if nix::unistd::geteuid().is_root() {
            assert_eq!((meta("data/db").uid(), meta("data/db").gid()), (100, 101));
        }
        assert_eq!(meta("etc/passwd").mtime(), 1_000_000, "clamped");
    }

    #[test]
    fn refuses_symlinks_and_unknown_identities() {
        let root = tempdir();
        let rootfs = root.path();
        fs::create_dir_all(rootfs.join("var")).unwrap_or_else(|e| panic!("{e}"));
        symlink("/run", rootfs.join("var/run")).unwrap_or_else(|e| panic!("{e}"));
        let r = recipe(rootfs, "name: example.com/x\nrootfs: {dirs: [{path: /var/run/x}]}\n");
        let e = finish(&r, rootfs, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.ends_with("rootfs.dirs[0].path: /var/run is a symlink in the image; name its target instead"), "{e}");
        let r = recipe(rootfs, "name: example.com/x\napp: {exec: [/x], user: redis}\n");
        let e = finish(&r, rootfs, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("app.user: \"redis\" is not in the image's /etc/passwd"), "{e}");
        let r = recipe(rootfs, "name: example.com/x\nrootfs: {users: [{name: a, uid: 5, gid: 7}]}\n");
        let e = finish(&r, rootfs, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("rootfs.users[0].gid: no group has gid 7"), "{e}");
    }
}
