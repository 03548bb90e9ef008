//! An image's mount points (appc's `mountPoints`, an OCI image's
//! `Volumes`): a pod volume of the mount point's name fills it without a
//! `mounts:` line (as rkt filled them); one the pod leaves unfilled gets an
//! empty volume of its own, said on stderr for an ACI, with the owner and
//! mode of the image's directory; a read-only mount point is mounted
//! read-only. Each is a mount point in the app (`/proc/self/mountinfo`), in
//! a namespace pod and in a VM pod. Needs root (and qemu and the guest
//! kernel for the VM test); reports a skip without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const VM_LIMIT: Duration = Duration::from_secs(240);

/// `example.com/mp:1`: busybox with mount points `database` at /db and
/// `config` at /config (read-only); the image's /config is uid 1000's,
/// mode 0750, and holds a file.
fn mount_point_image(live: &Live) {
    let dir = live.work.join("mp-build");
    fs::create_dir_all(dir.join("rootfs/db")).unwrap();
    fs::create_dir_all(dir.join("rootfs/config")).unwrap();
    fs::write(dir.join("rootfs/config/from-image"), "hidden by the volume\n").unwrap();
    // `dir` is copied over `dirs` with its modes: 0750 in both.
    fs::set_permissions(dir.join("rootfs/config"), fs::Permissions::from_mode(0o750)).unwrap();
    let recipe = serde_json::json!({
        "name": "example.com/mp",
        "labels": { "version": "1" },
        "app": {
            "exec": ["/bin/true"], "user": "0", "group": "0",
            "mountPoints": [
                { "name": "database", "path": "/db" },
                { "name": "config", "path": "/config", "readOnly": true },
            ],
        },
        "rootfs": { "dir": "rootfs", "dirs": [{ "path": "/config", "mode": "0750", "owner": "1000", "group": "1000" }] },
        "dependencies": [{ "imageName": "example.com/busybox", "labels": { "version": "1.35" } }],
    });
    let recipe_path = dir.join("recipe.yaml");
    fs::write(&recipe_path, serde_json::to_string_pretty(&recipe).unwrap()).unwrap();
    let out = live.images.join("mp-1.aci");
    live.ok(&["image", "build", p(&recipe_path), "-o", p(&out), "--cache-dir", p(&live.work.join("deb-cache"))]);
    live.sign(e2e_key(), &out);
    live.ok(&["fetch", p(&out)]);
}

/// What each app reports into /out (a host volume every user may write).
const WRITER: &str = "grep -q ' /db ' /proc/self/mountinfo && echo mounted > /out/writer-db; \
    echo from-writer > /db/shared; \
    grep ' /config ' /proc/self/mountinfo | grep -q ' ro,' && echo read-only > /out/writer-config; \
    touch /config/x 2>/dev/null || echo refused > /out/writer-config-write; \
    stat -c '%u %a' /config > /out/writer-config-owner; ls -A /config > /out/writer-config-ls";
const READER: &str = "grep -q ' /db ' /proc/self/mountinfo && echo mounted > /out/reader-db; \
    i=0; while [ ! -e /db/shared ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
    cat /db/shared > /out/reader-db-content";

fn read(out: &std::path::Path, name: &str) -> String {
    let path = out.join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

/// Two apps of the image, the pod's `database` volume filling /db in both
/// by its name alone; /config left unfilled.
fn mount_points_are_filled(isolation: &str, limit: Duration) {
    let live = Live::new(&[Example::Busybox]);
    mount_point_image(&live);
    let out = live.out_dir("out");
    let app = |name: &str, script: &str| {
        format!(
            "  - name: {name}\n    image: example.com/mp:1\n    exec: [/bin/sh, -c, {}]\n    \
             mounts: [{{ volume: out, path: /out }}]\n",
            serde_json::to_string(script).unwrap()
        )
    };
    let yaml = format!(
        "name: mp-{isolation}\nisolation: {isolation}\nnetwork: none\napps:\n{}{}volumes:\n  - \
         {{ name: database, kind: empty }}\n  - {{ name: out, kind: host, source: {} }}\n",
        app("writer", WRITER),
        app("reader", READER),
        out.display()
    );
    let file = live.pod_file(&format!("mp-{isolation}"), &yaml);
    let run = live.run_within(&["run", p(&file)], limit);
    assert!(run.status.success(), "{}", describe(&["run"], &run));
    for app in ["writer", "reader"] {
        assert_eq!(read(&out, &format!("{app}-db")), "mounted", "{app}: /db is a mount point");
    }
    assert_eq!(read(&out, "reader-db-content"), "from-writer", "both apps' /db is the pod's database volume");
    assert_eq!(read(&out, "writer-config"), "read-only", "a read-only mount point is mounted read-only");
    assert_eq!(read(&out, "writer-config-write"), "refused", "and refuses writes");
    assert_eq!(read(&out, "writer-config-owner"), "1000 750", "the empty volume has the image directory's owner");
    assert_eq!(read(&out, "writer-config-ls"), "", "the empty volume is empty");
    // Said, naming the app, the mount point and the image; not for /db.
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_mentions(&stderr, &["app writer", "mount point config (/config)", "example.com/mp", "empty volume"]);
    assert!(!stderr.contains("mount point database"), "a filled mount point is not warned about: {stderr}");
}

#[test]
fn a_pod_volume_fills_the_mount_points_of_its_name() {
    if let Some(why) = skip_reason(false) {
        eprintln!("SKIP: {why}");
        return;
    }
    mount_points_are_filled("namespace", LIMIT);
}

#[test]
fn a_vm_pods_volumes_are_mount_points_in_its_apps() {
    if let Some(why) = skip_reason_vm() {
        eprintln!("SKIP: {why}");
        return;
    }
    mount_points_are_filled("vm", VM_LIMIT);
}
