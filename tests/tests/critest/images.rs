//! Local stand-ins for the images critest (cri-tools v1.37.0) pulls from
//! public registries, which this machine cannot reach: busybox-based OCI
//! images with the users, groups, files and commands each test expects,
//! pushed to a local registry under
//! `mirror/<original name>`, cosign-signed for their original names
//! (`--sign-container-identity`), and served to `pod cri serve` through
//! pod's registry mirrors (`pod source mirror add`): the images keep the
//! names critest asks for, and their signatures are checked against the
//! keys trusted for those names.
//!
//! The list follows pkg/validate/consts.go, consts_linux.go,
//! security_context_linux.go, multi_container_linux.go and
//! pkg/framework/util.go of cri-tools v1.37.0, and the Dockerfiles of its
//! images/ directory.
//!
//! The busybox is Debian's dynamically linked one with the host's glibc
//! (scripts/install-deps.sh unpacks it), its applets hard links in /bin as
//! in the busybox images: its sh runs commands found in PATH, so masking
//! /bin/ls (MaskedPaths) denies `ls` and nothing else. Debian's
//! busybox-static, the fallback, runs its applets itself whatever PATH
//! holds. Neither has pgrep or ipcs, which the busybox images have: small
//! scripts stand in for them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// The registries critest names, each served by a mirror repository.
pub const MIRRORED: &[&str] = &["registry.k8s.io/", "k8s.gcr.io/", "gcr.io/"];

/// critest's default container image and web server image.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
pub const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";

const STAGING: &str = "gcr.io/k8s-staging-cri-tools/";

/// One stand-in: the names it is pushed under and how it differs from
/// plain busybox.
struct StandIn {
    names: Vec<String>,
    cmd: &'static [&'static str],
    user: Option<&'static str>,
    /// Files added in a layer of its own (path, content); those under
    /// `usr/sbin/` and `usr/local/bin/` executable.
    files: &'static [(&'static str, &'static [u8])],
}

/// nginx's stand-in: a process named `nginx` (`pidof nginx`, the hostPID
/// tests) that writes /var/run/nginx.pid and serves `$2` on port `$3` with
/// busybox httpd. Its first argument is `master process`: nginx retitles
/// its main process `nginx: master process ...`, which a script cannot, and
/// critest's ContainerPID spec looks for those words in /proc/1/cmdline.
const NGINX_SCRIPT: &[u8] = b"#!/bin/sh\nmkdir -p /var/run\necho $$ > /var/run/nginx.pid\n\
httpd -f -p \"$3\" -h \"$2\" &\ntrap 'kill $!; exit 0' TERM INT\nwait\n";
const INDEX: &[u8] = b"<h1>Welcome to nginx!</h1>\n";

/// httpd's stand-in: busybox httpd in the foreground, after the line
/// Apache's httpd logs first (critest's "should support container log"
/// waits for `httpd` in the container's log).
const HTTPD_SCRIPT: &[u8] = b"#!/bin/sh\n\
echo \"AH00558: httpd: Could not reliably determine the server's fully qualified domain name\" >&2\n\
exec httpd -f -p 80 -h /usr/local/apache2/htdocs\n";

/// `pgrep PATTERN` (procps' without options): the pids of the processes
/// whose name matches the extended regex, one a line, itself left out;
/// status 1 when none matches.
const PGREP: &[u8] = br#"#!/bin/sh
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
for d in /proc/[0-9]*; do
  read -r comm 2>/dev/null <"$d/comm" && echo "${d#/proc/} $comm"
done | awk -v me="$$" -v pat="$1" '
  $1 != me { name = $0; sub(/^[0-9]+ /, "", name); if (name ~ pat) { print $1; n++ } }
  END { exit n ? 0 : 1 }'
"#;

/// `ipcs [-m|-q|-s]` (util-linux's default output): the System V IPC
/// objects of the caller's IPC namespace, from /proc/sysvipc.
const IPCS: &[u8] = br#"#!/bin/sh
table() {
  printf '\n------ %s --------\n%s\n' "$2" "$3"
  awk -v kind="$1" 'NR > 1 {
    key = $1 < 0 ? $1 + 4294967296 : $1
    if (kind == "shm") printf "0x%08x %-10s %-10s %-10s %-10s %-10s\n", key, $2, $8, $3, $4, $7
    else if (kind == "sem") printf "0x%08x %-10s %-10s %-10s %-10s\n", key, $2, $5, $3, $4
    else printf "0x%08x %-10s %-10s %-10s %-12s %-12s\n", key, $2, $8, $3, $4, $5
  }' "/proc/sysvipc/$1"
}
shm() { table shm "Shared Memory Segments" "key        shmid      owner      perms      bytes      nattch"; }
sem() { table sem "Semaphore Arrays" "key        semid      owner      perms      nsems"; }
msg() { table msg "Message Queues" "key        msqid      owner      perms      used-bytes   messages"; }
case "$1" in
  -m) shm ;;
  -s) sem ;;
  -q) msg ;;
  "") msg; shm; sem ;;
  *) echo "usage: ipcs [-m|-q|-s]" >&2; exit 1 ;;
esac
"#;

fn stand_ins() -> Vec<StandIn> {
    let staging = |n: &str| format!("{STAGING}{n}");
    let plain = |names: Vec<String>| StandIn { names, cmd: &["sh"], user: None, files: &[] };
    let mut v = vec![
        plain(vec![BUSYBOX.into()]),
        // nginx and httpd: busybox httpd in the foreground, as the tests
        // start them without a command and expect port 80 to answer 200.
        StandIn {
            names: vec![NGINX.into()],
            cmd: &["/usr/sbin/nginx", "master process", "/usr/share/nginx/html", "80"],
            user: None,
            files: &[("usr/share/nginx/html/index.html", INDEX), ("usr/sbin/nginx", NGINX_SCRIPT)],
        },
        StandIn {
            names: vec!["registry.k8s.io/e2e-test-images/httpd:2.4.39-4".into()],
            cmd: &["/usr/local/bin/httpd-foreground"],
            user: None,
            files: &[
                ("usr/local/apache2/htdocs/index.html", b"<html><body><h1>It works!</h1></body></html>\n"),
                ("usr/local/bin/httpd-foreground", HTTPD_SCRIPT),
            ],
        },
        // images/hostnet-nginx: nginx on port 12003 (in the host's network).
        StandIn {
            names: vec![format!("{STAGING}hostnet-nginx-amd64:latest")],
            cmd: &["/usr/sbin/nginx", "master process", "/usr/share/nginx/html", "12003"],
            user: None,
            files: &[("usr/share/nginx/html/index.html", INDEX), ("usr/sbin/nginx", NGINX_SCRIPT)],
        },
        // One image under two registries: "removing image from one registry
        // should remove all tags from other registries".
        StandIn {
            names: vec!["registry.k8s.io/pause:3.9".into(), "k8s.gcr.io/pause:3.9".into()],
            cmd: &["sleep", "2147483647"],
            user: None,
            files: &[],
        },
        // One image under three tags.
        plain((1..=3).map(|i| staging(&format!("test-image-tags:{i}"))).collect()),
        // images/image-user: USER only.
        StandIn { names: vec![staging("test-image-user-uid:latest")], cmd: &["sh"], user: Some("1002"), files: &[] },
        StandIn {
            names: vec![staging("test-image-user-username:latest")],
            cmd: &["sh"],
            user: Some("www-data"),
            files: &[],
        },
        StandIn {
            names: vec![staging("test-image-user-uid-group:latest")],
            cmd: &["sh"],
            user: Some("1003:users"),
            files: &[],
        },
        StandIn {
            names: vec![staging("test-image-user-username-group:latest")],
            cmd: &["sh"],
            user: Some("www-data:users"),
            files: &[],
        },
        // images/image-predefined-group: default-user (1000) in
        // group-defined-in-image (50000).
        StandIn {
            names: vec![staging("test-image-predefined-group:latest")],
            cmd: &["sh"],
            user: Some("1000"),
            files: &[("etc/passwd", PASSWD_PREDEFINED), ("etc/group", GROUP_PREDEFINED)],
        },
    ];
    // images/image-test: busybox plus a file named after the test; each a
    // different image.
    for name in ["test-image-latest:latest", "test-image-tag:test", "test-image-tag:all"].into_iter().chain([
        "test-image-1:latest",
        "test-image-2:latest",
        "test-image-3:latest",
    ]) {
        v.push(plain(vec![staging(name)]));
    }
    v
}

/// busybox's own /etc/passwd and /etc/group (busybox:1.37.0's users).
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
bin:x:2:2:bin:/bin:/bin/false\nsys:x:3:3:sys:/dev:/bin/false\nsync:x:4:100:sync:/bin:/bin/sync\n\
mail:x:8:8:mail:/var/spool/mail:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\n\
operator:x:37:37:Operator:/var:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
const GROUP: &str = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\nwheel:x:10:root\n\
mail:x:8:\nwww-data:x:33:\noperator:x:37:\nstaff:x:50:\nusers:x:100:\nnogroup:x:65533:\nnobody:x:65534:\n";
const PASSWD_PREDEFINED: &[u8] = b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n\
default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
const GROUP_PREDEFINED: &[u8] = b"root:x:0:\nwww-data:x:33:\nusers:x:100:\ndefault-user:x:1000:\n\
group-defined-in-image:x:50000:default-user\nnobody:x:65534:\n";

/// Where the stand-ins of names under `prefix` live in `reg`.
pub fn mirror_of(reg: &Registry, prefix: &str) -> String {
    format!("docker://{}/mirror/{}", reg.host(), prefix)
}

/// The repository (`mirror/<name>`) and tag of `name` (`NAME:TAG`).
fn mirror_repo(name: &str) -> (String, String) {
    let (repo, tag) = name.rsplit_once(':').unwrap();
    (format!("mirror/{repo}"), tag.to_owned())
}

/// What `publish` made.
#[derive(Debug)]
pub struct Published {
    /// How many names were pushed.
    pub names: usize,
    /// Whether the nonewprivs stand-in was built (it needs rustc).
    pub nonewprivs: bool,
    /// Whether the stand-ins' sh finds commands in PATH (Debian's dynamic
    /// busybox), rather than running busybox's applets itself.
    pub path_lookup: bool,
}

/// Debian's dynamic busybox, as scripts/install-deps.sh unpacks it.
const DYNAMIC_BUSYBOX: &str = "/usr/local/lib/pod-test/busybox/busybox";

/// The libraries `bin` loads (with the loader), as ldd lists them; none
/// for a static program (ldd fails).
fn shared_libraries(bin: &Path) -> Vec<std::path::PathBuf> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, r)| r);
            path.split_whitespace().next().filter(|p| p.starts_with('/')).map(Into::into)
        })
        .collect()
}

/// Puts busybox `bb` in `root`: /bin/busybox, a hard link per applet in
/// /bin (as busybox's images have), the libraries it loads at their host
/// paths, and the pgrep and ipcs scripts.
fn install_busybox(root: &Path, bb: &Path) {
    let applets = String::from_utf8(Command::new(bb).arg("--list").output().unwrap().stdout).unwrap();
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(bb, bin.join("busybox")).unwrap();
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
        fs::hard_link(bin.join("busybox"), bin.join(applet)).unwrap();
    }
    for lib in shared_libraries(bb) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&lib, &to).unwrap();
    }
    for (name, script) in [("pgrep", PGREP), ("ipcs", IPCS)] {
        let f = bin.join(name);
        if !f.exists() {
            fs::write(&f, script).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// Pushes `img` as the mirror copy of `name` (`NAME:TAG`) and signs it with
/// `key` for `name`'s repository.
fn push_signed(reg: &Registry, key: &CosignKey, img: &OciImage, name: &str) {
    let (repo, tag) = mirror_repo(name);
    let digest = reg.push(img, &format!("{repo}:{tag}"));
    let original = name.rsplit_once(':').unwrap().0;
    let out = cosign_sign_output(
        key,
        &reg.image_ref(&format!("{repo}@{digest}")),
        reg,
        &["--sign-container-identity", original],
    );
    assert!(out.status.success(), "cosign sign {name}:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// critest's NoNewPrivs image: a setuid-root program that prints its
/// effective uid (images/nonewprivs of kubernetes' e2e test images).
pub const NONEWPRIVS: &str = "registry.k8s.io/e2e-test-images/nonewprivs:1.3";

/// nonewprivs' program, built static with the Rust toolchain that runs the
/// tests (`$RUSTC`, else rustc); `None` when it cannot be built.
fn nnp_helper(work: &Path) -> Option<std::path::PathBuf> {
    let src = work.join("nnp.rs");
    fs::write(
        &src,
        "extern \"C\" {\n    fn geteuid() -> u32;\n}\n\nfn main() {\n    // SAFETY: geteuid has no preconditions.\n    \
         let uid = unsafe { geteuid() };\n    println!(\"Effective uid: {}\", uid);\n}\n",
    )
    .unwrap();
    let out = work.join("nnp");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(rustc)
        .args(["-O", "-C", "target-feature=+crt-static", "-C", "strip=symbols", "-o"])
        .args([&out, &src])
        .output();
    match built {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => {
            eprintln!("the nonewprivs stand-in is not built: rustc: {}", String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            eprintln!("the nonewprivs stand-in is not built: rustc: {e}");
            None
        }
    }
}

/// Builds every stand-in into an OCI layout under `work`, pushes each under
/// its mirror names in `reg` and signs it with `key` for its original name.
pub fn publish(work: &Path, reg: &Registry, key: &CosignKey) -> Result<Published, Skip> {
    let layout = work.join("stand-ins");
    // One base layer, as busybox's own image has.
    let path_lookup = which(DYNAMIC_BUSYBOX).is_some() && which("ldd").is_some();
    let bb = if path_lookup {
        Path::new(DYNAMIC_BUSYBOX)
    } else {
        need_tools(&["/bin/busybox"])?;
        eprintln!("{DYNAMIC_BUSYBOX} (scripts/install-deps.sh) or ldd is missing: the stand-ins use busybox-static");
        Path::new("/bin/busybox")
    };
    let base = OciImage::new(&layout, "busybox")?.layer_with(|root| {
        install_busybox(root, bb);
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), PASSWD).unwrap();
        fs::write(root.join("etc/group"), GROUP).unwrap();
        for d in ["tmp", "root", "var/www", "home", "usr/share/nginx/html", "usr/local/apache2/htdocs"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    });
    let mut published = 0;
    for (i, s) in stand_ins().into_iter().enumerate() {
        let mut img = OciImage::based_on(&base, &format!("stand-in-{i}"));
        if !s.files.is_empty() {
            img = img.layer_with(|root| {
                for (path, content) in s.files {
                    let f = root.join(path);
                    fs::create_dir_all(f.parent().unwrap()).unwrap();
                    fs::write(&f, content).unwrap();
                    if path.starts_with("usr/sbin/") || path.starts_with("usr/local/bin/") {
                        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
                    }
                }
            });
        }
        img = img.cmd(s.cmd).label("io.pod.critest.stand-in-for", &s.names[0]);
        if let Some(u) = s.user {
            img = img.user(u);
        }
        for name in &s.names {
            push_signed(reg, key, &img, name);
            published += 1;
        }
    }
    let nnp = nnp_helper(work).map(|helper| {
        let img = OciImage::based_on(&base, "nonewprivs")
            .layer_with(|root| {
                let f = root.join("usr/local/bin/nnp");
                fs::create_dir_all(f.parent().unwrap()).unwrap();
                fs::copy(&helper, &f).unwrap();
                std::os::unix::fs::chown(&f, Some(0), Some(0)).unwrap();
                fs::set_permissions(&f, fs::Permissions::from_mode(0o4755)).unwrap();
            })
            .cmd(&["/usr/local/bin/nnp"]);
        push_signed(reg, key, &img, NONEWPRIVS);
    });
    Ok(Published { names: published + usize::from(nnp.is_some()), nonewprivs: nnp.is_some(), path_lookup })
}

/// Makes `pod` (the environment of `pod_env`) pull critest's names through
/// the mirrors in `reg`, trusting `key` for them.
pub fn configure(pod_env: &Pod, reg: &Registry, key: &CosignKey) {
    for prefix in MIRRORED {
        pod_env.ok(&["source", "mirror", "add", "--prefix", prefix, &mirror_of(reg, prefix)]);
        pod_env.ok(&["trust", "add", "--prefix", prefix, p(&key.public)]);
    }
}

/// critest's `--test-images-file`: the settable images, named as critest's
/// defaults (served by the mirrors).
pub fn images_file(dir: &Path) -> std::path::PathBuf {
    let f = dir.join("test-images.yaml");
    fs::write(&f, format!("defaultTestContainerImage: {BUSYBOX}\nwebServerTestImage: {NGINX}\n")).unwrap();
    f
}
