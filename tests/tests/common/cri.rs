//! `pod cri serve` under the real crictl (cri-tools v1.37.0, built by
//! scripts/build-cri-tools.sh), for the CRI test files: a server on a socket
//! of its own, crictl with a config of its own, and waits on states.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

const CRICTL_INSTALLED: &str = "/usr/local/lib/pod-test/bin/crictl";

pub fn crictl_bin() -> Result<PathBuf, Skip> {
    if let Some(c) = std::env::var_os("POD_TEST_CRICTL") {
        return which(&c.to_string_lossy()).ok_or_else(|| Skip(format!("crictl not found: POD_TEST_CRICTL={c:?}")));
    }
    which(CRICTL_INSTALLED)
        .or_else(|| which("crictl"))
        .ok_or_else(|| Skip("crictl not found (scripts/build-cri-tools.sh builds it)".into()))
}

/// `pod cri serve` on a socket of its own; killed on drop.
pub struct CriServer {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub crictl: PathBuf,
}

impl CriServer {
    pub fn start(pod: &Pod, extra: &[&str]) -> Result<Self, Skip> {
        let crictl = crictl_bin()?;
        let socket = pod.work.join("cri/cri.sock");
        let log = pod.work.join("cri.log");
        let listen = format!("unix://{}", socket.display());
        let mut args = vec!["cri", "serve", "--listen", &listen];
        args.extend_from_slice(extra);
        let mut cmd = pod.cmd(&args);
        // Registries on loopback only: a pull that falls back from a mirror
        // to a public registry fails at once instead of leaving the machine.
        no_internet(&mut cmd);
        let child = cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let mut s = Self { child, socket, log, crictl };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.socket.exists() {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("pod cri serve exited with {status}:\n{}", s.log());
            }
            assert!(Instant::now() < deadline, "no socket after 20 s:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn crictl(&self, args: &[&str]) -> Output {
        let endpoint = format!("unix://{}", self.socket.display());
        // A crictl.yaml of its own: none of the host's.
        let config = self.socket.with_file_name("crictl.yaml");
        std::fs::write(&config, format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n"))
            .unwrap();
        let mut c = Command::new(&self.crictl);
        c.arg("--config").arg(&config).args(args).stdin(Stdio::null());
        c.output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(out.status.success(), "{}\nserver log:\n{}", describe(&["crictl"], &out), self.log());
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(!out.status.success(), "crictl {args:?} succeeded:\n{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for CriServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed server leaves its socket; a next one must not be taken
        // for ready because of it.
        let _ = std::fs::remove_file(&self.socket);
    }
}

pub fn images(s: &CriServer) -> Vec<Value> {
    s.json(&["images", "-o", "json"])["images"].as_array().unwrap().clone()
}

/// The pod directories, mounts and cgroups a pod left, if any.
pub fn leftovers_of(pod: &Pod, uuid: &str) -> Vec<String> {
    let mut left = Vec::new();
    for state in ["embryo", "prepared", "run", "garbage"] {
        let d = pod.data.join("pods").join(state).join(uuid);
        if d.exists() {
            left.push(format!("pod dir {}", d.display()));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(mountinfo.lines().filter(|l| l.contains(uuid)).map(|l| format!("mount {l}")));
    left.extend(cgroup_dirs_of(uuid).iter().map(|d| format!("cgroup {}", d.display())));
    left
}

pub fn wait_state(s: &CriServer, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = s.json(&["inspect", "-o", "json", id]);
        if st["status"]["state"] == want {
            return st;
        }
        assert!(Instant::now() < deadline, "container {id} not {want}: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
