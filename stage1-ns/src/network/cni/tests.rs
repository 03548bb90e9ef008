//! Tier (a): the exec protocol against fake plugins — shell scripts in a
//! temp dir that record their environment and stdin and print canned
//! answers. Nothing here touches the host's network.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::network::ports::Protocol;

const RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"podt0","mac":"aa:00:00:00:00:01"},{"name":"veth1","mac":"aa:00:00:00:00:02"},{"name":"eth0","mac":"aa:00:00:00:00:03","sandbox":"/x"}],"ips":[{"address":"10.213.1.2/24","gateway":"10.213.1.1","interface":2}]}"#;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    /// A conf dir with network `fakenet` = [bridge, portmap], both fakes.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["bin", "conf", "calls", "cache"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        let root = dir.path().display();
        let script = format!(
            r#"#!/bin/sh
d={root}
n=$(basename "$0")
f="$d/calls/$(ls "$d/calls" | wc -l | xargs printf %03d)-$n-$CNI_COMMAND"
env | sort > "$f.env"
cat > "$f.stdin"
if [ -f "$d/$n.$CNI_COMMAND.stderr" ]; then cat "$d/$n.$CNI_COMMAND.stderr" >&2; exit 3; fi
if [ -f "$d/$n.$CNI_COMMAND.fail" ]; then cat "$d/$n.$CNI_COMMAND.fail"; exit 1; fi
if [ -f "$d/$n.$CNI_COMMAND.hang" ]; then sleep 30; fi
if [ -f "$d/$n.$CNI_COMMAND.out" ]; then cat "$d/$n.$CNI_COMMAND.out"; fi
exit 0
"#
        );
        for plugin in ["bridge", "portmap"] {
            let path = dir.path().join("bin").join(plugin);
            fs::write(&path, &script).expect("write plugin");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let fake = Self { dir };
        fake.put("bridge.ADD.out", RESULT);
        fake.put("portmap.ADD.out", RESULT);
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "fakenet",
            "plugins": [
                {"type": "bridge", "bridge": "podt0", "ipam": {"type": "host-local", "subnet": "10.213.1.0/24"}},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false}
            ]
        });
        fake.put("conf/10-fake.conflist", &conflist.to_string());
        fake
    }

    fn put(&self, file: &str, text: &str) {
        fs::write(self.dir.path().join(file), text).expect("write");
    }

    /// The plugins run with a stand-in iptables on their `PATH`, so that
    /// their failures are theirs whether the host has iptables or not.
    fn cni(&self) -> Cni {
        let helpers = self.dir.path().join("helpers");
        fs::create_dir_all(&helpers).expect("mkdir");
        let iptables = helpers.join("iptables");
        fs::write(&iptables, "#!/bin/sh\nexit 0\n").expect("write");
        fs::set_permissions(&iptables, fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = format!("{}:{}", helpers.display(), exec::PLUGIN_PATH_ENV);
        self.cni_with_path(&path)
    }

    fn cni_with_path(&self, path_env: &str) -> Cni {
        Cni::new(self.dir.path().join("conf"), self.dir.path().join("cache"))
            .with_plugin_dirs(vec![self.dir.path().join("nowhere"), self.dir.path().join("bin")])
            .with_path_env(path_env)
    }

    /// The plugins run with a `PATH` holding the tools the fake plugins
    /// use, and no iptables: as on a host without the iptables package.
    fn cni_without_iptables(&self) -> Cni {
        let tools = self.dir.path().join("tools");
        fs::create_dir_all(&tools).expect("mkdir");
        for tool in ["basename", "ls", "wc", "xargs", "printf", "env", "sort", "cat", "sleep"] {
            let found = ["/usr/bin", "/bin"].iter().map(|d| PathBuf::from(d).join(tool)).find(|p| p.exists());
            let _ = std::os::unix::fs::symlink(found.expect(tool), tools.join(tool));
        }
        self.cni_with_path(&tools.to_string_lossy())
    }

    fn netns(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    /// `(plugin-COMMAND, env, stdin)` per call, in order.
    fn calls(&self) -> Vec<(String, String, Value)> {
        let dir = self.dir.path().join("calls");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .expect("calls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(".env").map(str::to_owned))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let env = fs::read_to_string(dir.join(format!("{n}.env"))).expect("env");
                let stdin = fs::read(dir.join(format!("{n}.stdin"))).expect("stdin");
                let stdin = serde_json::from_slice(&stdin).expect("stdin is JSON");
                (n[4..].to_owned(), env, stdin)
            })
            .collect()
    }

    fn cache_file(&self) -> PathBuf {
        self.dir.path().join("cache/fakenet-pod1-eth0.json")
    }
}

fn env_var<'a>(env: &'a str, key: &str) -> Option<&'a str> {
    env.lines().find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn ports() -> Vec<PortMapping> {
    vec![PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp, host_ip: None }]
}

#[test]
fn add_runs_the_chain_in_order_and_caches_the_result() {
    let fake = Fake::new();
    let attachment = fake.cni().add(&fake.netns(), "pod1", "eth0", "fakenet", &ports()).expect("add");
    assert_eq!(attachment.ips, ["10.213.1.2/24".parse::<IpNet>().expect("ipnet")]);
    assert_eq!(attachment.gateway, Some("10.213.1.1".parse().expect("ip")));
    assert_eq!(attachment.mac.as_deref(), Some("aa:00:00:00:00:03"));

    let calls = fake.calls();
    let order: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(order, ["bridge-ADD", "portmap-ADD"]);
    let (_, env, bridge_in) = &calls[0];
    assert_eq!(env_var(env, "CNI_COMMAND"), Some("ADD"));
    assert_eq!(env_var(env, "CNI_CONTAINERID"), Some("pod1"));
    assert_eq!(env_var(env, "CNI_NETNS"), fake.netns().to_str());
    assert_eq!(env_var(env, "CNI_IFNAME"), Some("eth0"));
    let cni_path = format!("{}:{}", fake.dir.path().join("nowhere").display(), fake.dir.path().join("bin").display());
    assert_eq!(env_var(env, "CNI_PATH"), Some(cni_path.as_str()));
    assert!(env_var(env, "PATH").is_some_and(|p| p.contains("/usr/sbin")), "plugins need iptables on PATH");
    for leaked in ["HOME", "CARGO", "RUST_TEST_THREADS", "USER"] {
        assert_eq!(env_var(env, leaked), None, "{leaked} leaked into the plugin environment");
    }
    assert_eq!(
        bridge_in,
        &json!({"cniVersion": "1.0.0", "name": "fakenet", "type": "bridge", "bridge": "podt0",
                "ipam": {"type": "host-local", "subnet": "10.213.1.0/24"}})
    );
    let result: Value = serde_json::from_str(RESULT).expect("json");
    assert_eq!(
        calls[1].2,
        json!({"cniVersion": "1.0.0", "name": "fakenet", "type": "portmap", "snat": false,
               "prevResult": result,
               "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}})
    );
    let cached: Value = serde_json::from_slice(&fs::read(fake.cache_file()).expect("cache")).expect("json");
    assert_eq!(cached["result"], result);
    assert_eq!(cached["config"]["name"], "fakenet");
}

#[test]
fn del_replays_the_cache_in_reverse_even_after_the_conflist_is_gone() {
    let fake = Fake::new();
    let cni = fake.cni();
    cni.add(&fake.netns(), "pod1", "eth0", "fakenet", &ports()).expect("add");
    fs::remove_file(fake.dir.path().join("conf/10-fake.conflist")).expect("rm conflist");
    cni.del(&fake.netns(), "pod1", "eth0", "fakenet").expect("del");
    let calls = fake.calls();
    let order: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(order, ["bridge-ADD", "portmap-ADD", "portmap-DEL", "bridge-DEL"]);
    let result: Value = serde_json::from_str(RESULT).expect("json");
    for (name, env, stdin) in &calls[2..] {
        assert_eq!(env_var(env, "CNI_COMMAND"), Some("DEL"), "{name}");
        // Not a pinned namespace: DEL runs with an empty CNI_NETNS.
        assert_eq!(env_var(env, "CNI_NETNS"), Some(""), "{name}");
        assert_eq!(stdin["prevResult"], result, "{name}");
    }
    assert_eq!(calls[2].2["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert!(!fake.cache_file().exists(), "cache removed after DEL");
    // Again: no cache, no configuration: nothing to run, still success.
    cni.del(&fake.netns(), "pod1", "eth0", "fakenet").expect("second del");
    assert_eq!(fake.calls().len(), 4);
}

#[test]
fn del_without_a_cache_uses_the_current_configuration() {
    let fake = Fake::new();
    fake.cni().del(&fake.netns(), "pod1", "eth0", "fakenet").expect("del");
    let calls = fake.calls();
    let order: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(order, ["portmap-DEL", "bridge-DEL"]);
    assert!(calls[0].2.get("prevResult").is_none());
}

#[test]
fn a_failure_midway_rolls_back_and_names_the_plugin() {
    let fake = Fake::new();
    fake.put("portmap.ADD.fail", r#"{"cniVersion":"1.0.0","code":11,"msg":"port in use","details":"8080/tcp"}"#);
    let err = fake.cni().add(&fake.netns(), "pod1", "eth0", "fakenet", &ports()).expect_err("add fails");
    assert!(matches!(&err, CniError::Plugin { plugin, code: 11, .. } if plugin == "portmap"), "{err:?}");
    assert_eq!(err.to_string(), "CNI plugin portmap ADD failed: port in use: 8080/tcp (code 11)");
    let calls = fake.calls();
    let order: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(order, ["bridge-ADD", "portmap-ADD", "portmap-DEL", "bridge-DEL"]);
    // Rollback carries what had been allocated so far.
    assert_eq!(calls[3].2["prevResult"]["ips"][0]["address"], "10.213.1.2/24");
    assert!(!fake.cache_file().exists(), "a rolled-back ADD leaves no cache");
}

#[test]
fn a_failed_rollback_keeps_the_cache_for_gc() {
    let fake = Fake::new();
    fake.put("portmap.ADD.fail", r#"{"code":11,"msg":"port in use"}"#);
    fake.put("bridge.DEL.fail", r#"{"code":100,"msg":"device busy"}"#);
    let err = fake.cni().add(&fake.netns(), "pod1", "eth0", "fakenet", &[]).expect_err("add fails");
    assert!(matches!(err, CniError::RollbackFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("port in use") && err.to_string().contains("device busy"), "{err}");
    assert!(fake.cache_file().exists());
}

#[test]
fn unstructured_failures_bad_results_and_missing_plugins() {
    let fake = Fake::new();
    fake.put("bridge.ADD.stderr", "panic: boom\ngoroutine 1 [running]\n");
    let err = fake.cni().add(&fake.netns(), "pod1", "eth0", "fakenet", &[]).expect_err("crash");
    assert!(matches!(err, CniError::PluginFailed { ref plugin, .. } if plugin == "bridge"), "{err:?}");
    assert!(err.to_string().contains("panic: boom | goroutine 1 [running]"), "{err}");

    let fake = Fake::new();
    fake.put("portmap.ADD.out", "not json");
    let err = fake.cni().add(&fake.netns(), "pod1", "eth0", "fakenet", &[]).expect_err("bad result");
    assert!(matches!(err, CniError::BadResult { ref plugin, .. } if plugin == "portmap"), "{err:?}");

    let fake = Fake::new();
    fs::remove_file(fake.dir.path().join("bin/portmap")).expect("rm");
    let err = fake.cni().add(&fake.netns(), "pod1", "eth0", "fakenet", &[]).expect_err("missing plugin");
    assert!(matches!(err, CniError::PluginNotFound { ref plugin, .. } if plugin == "portmap"), "{err:?}");
    assert!(fake.calls().is_empty(), "nothing runs when a plugin of the chain is missing");

    let err = fake.cni().add(&fake.netns(), "pod1", "eth0", "nonet", &[]).expect_err("unknown network");
    assert!(err.to_string().contains("no CNI network named \"nonet\""), "{err}");
    for (cid, ifname) in [("", "eth0"), ("../x", "eth0"), ("pod1", "a/b"), ("pod1", "sixteen-chars-xx")] {
        let err = fake.cni().add(&fake.netns(), cid, ifname, "fakenet", &[]).expect_err("bad args");
        assert!(matches!(err, CniError::InvalidArgument(_)), "{cid:?} {ifname:?}: {err:?}");
    }
}

#[test]
fn a_hung_plugin_is_killed_with_what_it_spawned() {
    let fake = Fake::new();
    fake.put("bridge.ADD.hang", "");
    let cni = fake.cni().with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = cni.add(&fake.netns(), "pod1", "eth0", "fakenet", &[]).expect_err("timeout");
    assert!(matches!(err, CniError::Timeout { ref plugin, .. } if plugin == "bridge"), "{err:?}");
    // The `sleep 30` grandchild held the pipes; killing the group frees them.
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn plugin_lookup_wants_an_executable_file() {
    let fake = Fake::new();
    let dirs = [fake.dir.path().join("conf"), fake.dir.path().join("bin")];
    fake.put("conf/bridge", "not executable");
    assert_eq!(exec::find_plugin(&dirs, "bridge").expect("found"), fake.dir.path().join("bin/bridge"));
    assert!(exec::find_plugin(&dirs, "macvlan").is_err());
}

/// portmap's answer when it finds no iptables.
const NO_IPTABLES: &str = r#"{"cniVersion":"1.0.0","code":999,"msg":"neither iptables nor ip6tables usable"}"#;

#[test]
fn without_iptables_del_carries_on_and_add_says_what_to_install() {
    // A pod attached while iptables was there; then it is gone: DEL warns
    // and carries on, so stop and gc can always collect the pod.
    let fake = Fake::new();
    fake.cni().add(&fake.netns(), "pod1", "eth0", "fakenet", &ports()).expect("add");
    fake.put("portmap.DEL.fail", NO_IPTABLES);
    let err = fake.cni().del(&fake.netns(), "pod1", "eth0", "fakenet").expect_err("iptables is there: a real failure");
    assert!(matches!(err, CniError::Plugin { ref plugin, .. } if plugin == "portmap"), "{err:?}");
    assert!(fake.cache_file().exists(), "a failed DEL keeps the cache");
    fake.cni_without_iptables().del(&fake.netns(), "pod1", "eth0", "fakenet").expect("del without iptables");
    assert!(!fake.cache_file().exists(), "the cache is gone");
    let order: Vec<String> = fake.calls().into_iter().map(|c| c.0).collect();
    assert_eq!(&order[order.len() - 2..], ["portmap-DEL", "bridge-DEL"], "the chain goes on past portmap");

    // An ADD without iptables fails saying what to install; its rollback
    // cannot fail for the same reason, so no cache is left for gc to trip on.
    let fake = Fake::new();
    fake.put("portmap.ADD.fail", NO_IPTABLES);
    fake.put("portmap.DEL.fail", NO_IPTABLES);
    let err = fake.cni_without_iptables().add(&fake.netns(), "pod1", "eth0", "fakenet", &ports()).expect_err("add");
    assert!(matches!(err, CniError::HelperMissing { helper: "iptables", .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("portmap") && msg.contains("install Debian's iptables package"), "{msg}");
    assert!(!fake.cache_file().exists(), "a rolled-back ADD leaves no cache");
}
