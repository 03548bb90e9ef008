//! pod-init against fake pod roots whose apps are busybox: start order and
//! readiness, exit codes, restarts, stopping, reaping, users, environment,
//! launch failures. Tier (b): each test needs root and says SKIP without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{can_run, free_port, millis_between, processes, wait_for, Pod, POD_INIT};
use nix::sys::signal::{kill, Signal};

#[test]
fn binary_is_static() {
    assert!(common::is_static_elf(Path::new(POD_INIT)), "{POD_INIT} has a program interpreter");
}

/// hot.ld and cold.ld took effect: the code pod-init runs while idle sits in
/// a section of its own, the code it never runs (panic symbolizer, printf,
/// gettext, dlopen...) in another, off the hot pages.
#[test]
fn never_run_code_is_linked_apart() {
    let sections = common::elf_sections(Path::new(POD_INIT));
    let size = |name: &str| sections.iter().find(|(n, _)| n == name).map(|(_, size)| *size);
    let cold = size(".text.cold").unwrap_or_else(|| panic!("{POD_INIT} has no .text.cold: {sections:?}"));
    // gimli alone is over 100 kB; glibc's printf, iconv and dlopen as much again.
    assert!(cold > 200 * 1024, ".text.cold is only {cold} bytes: did cold.ld's patterns stop matching?");
    // hot.ld took effect: what pod-init runs while idle is packed before it
    // (glibc's start-up, malloc and syscall wrappers alone are over 32 kB).
    let hot = size(".text.hot").unwrap_or_else(|| panic!("{POD_INIT} has no .text.hot: {sections:?}"));
    assert!(hot > 32 * 1024, ".text.hot is only {hot} bytes: did hot.ld's patterns stop matching?");
}

#[test]
fn dependents_start_once_ready_and_sigterm_stops_the_pod() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    let port = free_port();
    // db listens only after 0.4 s: web would fail to connect if started early.
    pod.app(
        "db",
        &format!(
            "[Service]\nExecStart=/bin/sh -c \"sleep 0.4; exec httpd -f -p 127.0.0.1:{port} -h /www\"\n\
             [X-Pod]\nReadinessTCP={port}\n"
        ),
    );
    pod.app(
        "web",
        &format!("[Unit]\nRequires=db\n[Service]\nExecStart=sh -c 'wget -q -O - http://127.0.0.1:{port}/ && echo CONNECTED'\n"),
    );
    let mut running = pod.start();
    let db = pod.wait_state("db", "ready");
    let web = pod.wait_state("web", "exited");
    assert!(pod.log("web").contains("hello from db\nCONNECTED"), "web log: {}", pod.log("web"));
    assert!(millis_between(&db["startedAt"], &web["startedAt"]) >= 400, "db {db}\nweb {web}");
    assert_eq!(pod.status("pod")["state"], "running");
    running.signal(Signal::SIGTERM);
    assert_eq!(running.exit_code(), 0, "{}", pod.stderr());
    let db = pod.status("db");
    assert_eq!((db["state"].as_str(), db["signal"].as_i64()), (Some("stopped"), Some(15)));
    let status = pod.status("pod");
    assert_eq!((status["state"].as_str(), status["exitCode"].as_i64()), (Some("exited"), Some(0)));
}

#[test]
fn exit_code_is_the_first_failure() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    pod.app("ok", "[Service]\nExecStart=/bin/true\n");
    pod.app("five", "[Service]\nExecStart=/bin/sh -c 'sleep 0.1; exit 5'\n");
    assert_eq!(pod.start().exit_code(), 5);
    assert_eq!(pod.status("ok")["state"], "exited");
    assert_eq!(
        (pod.status("five")["state"].as_str(), pod.status("five")["exitCode"].as_i64()),
        (Some("failed"), Some(5))
    );

    let pod = Pod::new();
    pod.app("late", "[Service]\nExecStart=/bin/sh -c 'sleep 0.6; exit 5'\n");
    pod.app("early", "[Service]\nExecStart=/bin/sh -c 'sleep 0.1; exit 3'\n");
    assert_eq!(pod.start().exit_code(), 3);
    assert_eq!(pod.status("pod")["exitCode"], 3);
}

#[test]
fn death_by_signal_is_128_plus_the_signal() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    pod.app("crash", "[Service]\nExecStart=/bin/sh -c 'kill -KILL $$'\n");
    assert_eq!(pod.start().exit_code(), 137);
    let s = pod.status("crash");
    assert_eq!(
        (s["state"].as_str(), s["exitCode"].as_i64(), s["signal"].as_i64()),
        (Some("failed"), Some(137), Some(9))
    );
    assert_eq!(s["message"], "killed by SIGKILL");
}

#[test]
fn restarts_on_failure_with_backoff() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    // Fails twice, then succeeds; the count survives in its rootfs.
    let script = "n=$(cat /count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /count; echo run $n; [ $n -ge 3 ]";
    pod.app("flaky", &format!("[Service]\nExecStart=/bin/sh -c '{script}'\nRestart=on-failure\nRestartSec=0.1\n"));
    let started = Instant::now();
    assert_eq!(pod.start().exit_code(), 0, "{}", pod.stderr());
    // Backoff 0.1 s, then 0.2 s.
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    let s = pod.status("flaky");
    assert_eq!(
        (s["state"].as_str(), s["restarts"].as_i64(), s["exitCode"].as_i64()),
        (Some("exited"), Some(2), Some(0))
    );
    assert_eq!(pod.log("flaky"), "run 1\nrun 2\nrun 3\n");
}

#[test]
fn sigterm_stops_dependents_first_and_kills_after_the_grace() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    pod.app(
        "base",
        "[Service]\nExecStart=/bin/sh -c 'trap \"echo base got TERM; exit 0\" TERM; while true; do sleep 0.05; done'\n",
    );
    // Ignores SIGTERM: only SIGKILL after TimeoutStopSec ends it.
    pod.app(
        "stubborn",
        "[Unit]\nAfter=base\n[Service]\nExecStart=/bin/sh -c 'trap \"\" TERM; while true; do sleep 0.05; done'\n\
         TimeoutStopSec=1\n",
    );
    let mut running = pod.start();
    let pid = common::pid_in(&pod.wait_state("stubborn", "ready")).unwrap();
    pod.wait_state("base", "ready");
    std::thread::sleep(Duration::from_millis(100)); // let the shells install their traps
    let asked = Instant::now();
    running.signal(Signal::SIGTERM);
    assert_eq!(running.exit_code(), 0, "{}", pod.stderr());
    let took = asked.elapsed();
    assert!(took >= Duration::from_millis(950) && took < Duration::from_secs(3), "stopped in {took:?}");
    let (base, stubborn) = (pod.status("base"), pod.status("stubborn"));
    assert_eq!((stubborn["state"].as_str(), stubborn["signal"].as_i64()), (Some("stopped"), Some(9)));
    assert_eq!((base["state"].as_str(), base["exitCode"].as_i64()), (Some("stopped"), Some(0)));
    assert!(millis_between(&stubborn["finishedAt"], &base["finishedAt"]) >= 0, "{base}\n{stubborn}");
    assert!(pod.log("base").contains("base got TERM"));
    assert_eq!(kill(pid, None), Err(nix::errno::Errno::ESRCH), "stubborn still alive");
}

#[test]
fn orphans_are_reaped() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    // The subshell exits at once: its `sleep 0.6` is orphaned to pod-init.
    pod.app("parent", "[Service]\nExecStart=/bin/sh -c '(sleep 0.6 &); sleep 2'\n");
    let mut running = pod.start();
    let init = running.pid().as_raw();
    let main = common::pid_in(&pod.wait_state("parent", "ready")).unwrap().as_raw();
    let mut orphan = None;
    wait_for(Duration::from_secs(1), || {
        orphan = processes().into_iter().find(|&(pid, _, ppid)| ppid == init && pid != main).map(|p| p.0);
        orphan.is_some()
    });
    let orphan = orphan.expect("the orphan was not reparented to pod-init");
    // Unreaped, it would stay in /proc as a zombie child of pod-init.
    let reaped = wait_for(Duration::from_millis(1500), || !processes().iter().any(|p| p.0 == orphan));
    let zombies: Vec<_> = processes().into_iter().filter(|&(_, state, ppid)| ppid == init && state == 'Z').collect();
    assert!(reaped && zombies.is_empty(), "orphan {orphan} not reaped; zombies of pod-init: {zombies:?}");
    assert_eq!(pod.try_status("parent").unwrap()["state"], "ready", "the app outlived its orphan");
    assert_eq!(running.exit_code(), 0);
}

#[test]
fn runs_as_pid_1_in_a_pid_namespace() {
    if !can_run() {
        return;
    }
    if !Path::new("/usr/bin/unshare").exists() {
        eprintln!("SKIP: runs_as_pid_1_in_a_pid_namespace: needs /usr/bin/unshare (util-linux)");
        return;
    }
    let pod = Pod::new();
    pod.app("one", "[Service]\nExecStart=/bin/sh -c '(sleep 0.2 &); sleep 0.4; exit 7'\n");
    let status = std::process::Command::new("/usr/bin/unshare")
        .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(POD_INIT)
        .arg("--root")
        .arg(&pod.root)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    assert_eq!(pod.status("pod")["pid"], 1);
}

#[test]
fn user_environment_and_working_directory() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    let script = r#"id -u; id -g; id -G; pwd; echo "G=$GREETING"; echo "H=$HOME U=$USER L=$LOGNAME A=$AC_APP_NAME C=$container"; echo "T=${TERM-unset} LEAK=${LEAK-unset}"; echo "P=$PATH"; cat; echo stdin-eof"#;
    pod.app(
        "who",
        &format!(
            "[Service]\nExecStart=sh -c '{script}'\nUser=app\nWorkingDirectory=/home/app\n\
             Environment=\"GREETING=hello world\"\n"
        ),
    );
    assert_eq!(pod.start().exit_code(), 0, "{}", pod.stderr());
    let want =
        "1000\n1000\n1000 2000\n/home/app\nG=hello world\nH=/home/app U=app L=app A=who C=pod\nT=unset LEAK=unset\n\
                P=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nstdin-eof\n";
    assert_eq!(pod.log("who"), want);
}

#[test]
fn launch_failures_are_reported() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    pod.app("missing", "[Service]\nExecStart=/bin/nope\n");
    pod.app("noexec", "[Unit]\nAfter=missing\n[Service]\nExecStart=/etc/passwd\n");
    pod.app("needs", "[Unit]\nRequires=missing\n[Service]\nExecStart=/bin/true\n");
    pod.app("nouser", "[Unit]\nAfter=noexec\n[Service]\nExecStart=/bin/true\nUser=nobody\n");
    assert_eq!(pod.start().exit_code(), 127, "{}", pod.stderr());
    let s = pod.status("missing");
    assert_eq!((s["state"].as_str(), s["exitCode"].as_i64()), (Some("failed"), Some(127)));
    assert!(s["message"].as_str().unwrap().starts_with("exec failed: ENOENT"), "{s}");
    let s = pod.status("noexec");
    assert_eq!(s["exitCode"], 126);
    assert!(s["message"].as_str().unwrap().starts_with("exec failed: EACCES"), "{s}");
    let s = pod.status("needs");
    assert_eq!((s["state"].as_str(), s["exitCode"].as_i64()), (Some("failed"), None));
    assert_eq!(s["message"], "not started: required app missing failed");
    assert_eq!(pod.status("nouser")["message"], "user \"nobody\" is not in the app's /etc/passwd");
}

#[test]
fn readiness_by_command_and_readiness_timeout() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    pod.app(
        "slow",
        "[Service]\nExecStart=/bin/sh -c 'sleep 0.4; touch /ready; exec sleep 30'\n\
         [X-Pod]\nReadinessExec=test -e /ready\nReadinessTimeoutSec=5\n",
    );
    pod.app("after", "[Unit]\nRequires=slow\n[Service]\nExecStart=/bin/true\n");
    pod.app("never", "[Service]\nExecStart=sleep 30\n[X-Pod]\nReadinessExec=/bin/false\nReadinessTimeoutSec=0.3\n");
    pod.app("needs-never", "[Unit]\nRequires=never\n[Service]\nExecStart=/bin/true\n");
    let mut running = pod.start();
    let after = pod.wait_state("after", "exited");
    assert!(millis_between(&pod.status("slow")["startedAt"], &after["startedAt"]) >= 400);
    let never = pod.wait_state("never", "failed");
    assert!(never["message"].as_str().unwrap().starts_with("not ready within 0.3s"), "{never}");
    assert_eq!(pod.wait_state("needs-never", "failed")["message"], "not started: required app never failed");
    running.signal(Signal::SIGTERM);
    // `never` failed first, killed by the SIGTERM of its readiness timeout.
    assert_eq!(running.exit_code(), 143);
    assert_eq!(pod.status("slow")["state"], "stopped");
}

#[test]
fn bad_configuration_exits_125_before_starting_anything() {
    let pod = Pod::new();
    std::fs::create_dir_all(pod.root.join("apps/a/rootfs")).unwrap();
    std::fs::create_dir_all(pod.root.join("apps/b/rootfs")).unwrap();
    let unit = |dep: &str| format!("[Unit]\nAfter={dep}\n[Service]\nExecStart=/bin/touch /started\n");
    std::fs::write(pod.root.join("units/a.unit"), unit("b")).unwrap();
    std::fs::write(pod.root.join("units/b.unit"), unit("a")).unwrap();
    assert_eq!(pod.start().exit_code(), 125);
    assert!(pod.stderr().contains("pod-init: dependency cycle: a -> b -> a"), "{}", pod.stderr());
    let s = pod.status("pod");
    assert_eq!((s["exitCode"].as_i64(), s["message"].as_str()), (Some(125), Some("dependency cycle: a -> b -> a")));
    assert!(pod.try_status("a").is_none() && !pod.root.join("apps/a/rootfs/started").exists());

    std::fs::write(pod.root.join("units/b.unit"), unit("nope")).unwrap();
    assert_eq!(pod.start().exit_code(), 125);
    assert!(pod.stderr().contains("app b is ordered after nope, which has no unit"), "{}", pod.stderr());
    std::fs::write(pod.root.join("units/b.unit"), "[Service]\nExecStart=/bin/true\nRestart=maybe\n").unwrap();
    assert_eq!(pod.start().exit_code(), 125);
    assert!(pod.stderr().contains("b.unit:3: Restart: invalid value \"maybe\""), "{}", pod.stderr());
}

#[test]
fn joins_its_cgroups_and_gets_a_cgroup_namespace() {
    if !can_run() {
        return;
    }
    /// A cgroup made for the test, removed when dropped.
    struct Cgroup(std::path::PathBuf);
    impl Drop for Cgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let name = format!("pod-init-test-{}", std::process::id());
    let cgroups: Vec<Cgroup> = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|h| Path::new(h).join(&name))
        .filter(|dir| dir.parent().unwrap().join("cgroup.procs").exists() && std::fs::create_dir(dir).is_ok())
        .map(Cgroup)
        .take(2)
        .collect();
    if cgroups.is_empty() {
        eprintln!("SKIP: joins_its_cgroups_and_gets_a_cgroup_namespace: cannot create a cgroup");
        return;
    }
    let pod = Pod::new();
    // stage1 binds the app's cgroup directories into the pod root.
    std::fs::create_dir(pod.root.join("cg")).unwrap();
    let mut paths = Vec::new();
    for (i, cgroup) in cgroups.iter().enumerate() {
        std::os::unix::fs::symlink(&cgroup.0, pod.root.join("cg").join(i.to_string())).unwrap();
        paths.push(format!("/cg/{i}"));
    }
    let unit = format!("[Service]\nExecStart=sleep 30\n[X-Pod]\nCgroup={}\n", paths.join(" "));
    pod.app("grouped", &unit);
    let mut running = pod.start();
    let pid = common::pid_in(&pod.wait_state("grouped", "ready")).unwrap();
    for cgroup in &cgroups {
        let procs = std::fs::read_to_string(cgroup.0.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{pid} not in {}: {procs}", cgroup.0.display());
    }
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"), "no cgroup namespace of its own");
    running.signal(Signal::SIGTERM);
    assert_eq!(running.exit_code(), 0);
}

#[test]
fn capabilities_no_new_privs_and_seccomp_files() {
    if !can_run() {
        return;
    }
    let pod = Pod::new();
    pod.app("root", "[Service]\nExecStart=sleep 30\n[X-Pod]\nCapabilities=CAP_KILL CAP_CHOWN\n");
    pod.app("user", "[Service]\nExecStart=sleep 30\nUser=app\n[X-Pod]\nCapabilities=CAP_KILL\n");
    let mut running = pod.start();
    // The fake rootfs has no /proc: read the apps' status from here.
    let field = |app: &str, name: &str| {
        let pid = common::pid_in(&pod.wait_state(app, "ready")).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap().to_owned();
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let (chown_kill, kill, none) = ("0000000000000021", "0000000000000020", "0000000000000000");
    for (app, eff, bnd) in [("root", chown_kill, chown_kill), ("user", none, kill)] {
        assert_eq!((field(app, "CapEff"), field(app, "CapPrm")), (eff.to_owned(), eff.to_owned()), "{app}");
        assert_eq!((field(app, "CapBnd"), field(app, "CapAmb")), (bnd.to_owned(), none.to_owned()), "{app}");
        assert_eq!(field(app, "NoNewPrivs"), "1", "{app}");
        assert_eq!(field(app, "Seccomp"), "0", "{app}: no SeccompFilter=");
    }
    running.signal(Signal::SIGTERM);
    assert_eq!(running.exit_code(), 0);

    // A filter file that is not whole BPF instructions fails the pod first.
    let pod = Pod::new();
    pod.app("a", "[Service]\nExecStart=/bin/touch /started\n[X-Pod]\nSeccompFilter=/units/a.bpf\n");
    std::fs::write(pod.root.join("units/a.bpf"), [0u8; 7]).unwrap();
    assert_eq!(pod.start().exit_code(), 125);
    assert!(pod.stderr().contains("app a: seccomp filter"), "{}", pod.stderr());
    assert!(pod.stderr().contains("7 bytes: not 1 to 4096 BPF instructions"), "{}", pod.stderr());
    assert!(!pod.root.join("apps/a/rootfs/started").exists());
}
