//! The systemd guest harness on its own (tests/tests/common/sdguest.rs):
//! systemd is PID 1, the guest is cgroup v2 only, machined answers.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/sdguest.rs"]
mod sdguest;

use sdguest::*;

#[test]
fn the_guest_boots_systemd_on_pure_cgroup_v2_and_runs_the_script() {
    if let Some(why) = skip_reason_sdguest() {
        eprintln!("SKIP: {why}");
        return;
    }
    let script = "cat /proc/1/comm; stat -f -c %T /sys/fs/cgroup; awk 'NR > 1 { print $2 }' /proc/cgroups | sort -u; \
                  machinectl list --no-legend --no-pager && echo machined-ok; echo out > written; exit 3\n";
    let mut guest = Guest::boot(&GuestSpec::new(script));
    let run = guest.wait();
    eprintln!(
        "booted in {:.1} s (guest uptime), script {:.1} s, {:.1?} in all",
        run.boot_secs, run.script_secs, run.wall
    );
    assert_eq!(run.rc, 3, "{}\n{}", run.log, guest.console());
    assert_eq!(run.log, "systemd\ncgroup2fs\n0\nmachined-ok\n", "{}", guest.console());
    assert_eq!(guest.read("written"), "out\n");
    // The script failed (3): the harness kept the guest's journal.
    let journal = guest.journal(400);
    assert!(journal.contains("org.freedesktop.machine1"), "machined was activated over the bus:\n{journal}");
}
