use super::*;

fn sc(f: impl FnOnce(&mut proto::LinuxContainerSecurityContext)) -> proto::ContainerConfig {
    let mut s = proto::LinuxContainerSecurityContext::default();
    f(&mut s);
    proto::ContainerConfig {
        linux: Some(proto::LinuxContainerConfig { security_context: Some(s), ..Default::default() }),
        ..Default::default()
    }
}

fn privileged_sandbox(p: bool) -> proto::PodSandboxConfig {
    proto::PodSandboxConfig {
        linux: Some(proto::LinuxPodSandboxConfig {
            security_context: Some(proto::LinuxSandboxSecurityContext { privileged: p, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn users_groups_and_defaults() {
    let keys = container_keys(&proto::ContainerConfig::default(), None).expect("keys");
    assert_eq!(Value::Object(keys), json!({"seccomp": "unconfined", "noNewPrivileges": false}));
    let c = sc(|s| {
        s.run_as_user = Some(proto::Int64Value { value: 1001 });
        s.run_as_group = Some(proto::Int64Value { value: 1002 });
        s.supplemental_groups = vec![1234, 5678];
        s.supplemental_groups_policy = proto::SupplementalGroupsPolicy::Strict as i32;
        s.readonly_rootfs = true;
        s.no_new_privs = true;
        s.seccomp = Some(proto::SecurityProfile::default());
    });
    let keys = Value::Object(container_keys(&c, None).expect("keys"));
    assert_eq!(keys["user"], "1001");
    assert_eq!(keys["group"], "1002");
    assert_eq!(keys["supplementaryGroups"], json!(["1234", "5678"]));
    assert_eq!(keys["supplementaryGroupsPolicy"], "strict");
    assert_eq!((keys["readOnlyRootFS"].clone(), keys["noNewPrivileges"].clone()), (json!(true), json!(true)));
    assert_eq!(keys["seccomp"], "default", "RuntimeDefault");
    let named = sc(|s| s.run_as_username = "nobody".into());
    assert_eq!(container_keys(&named, None).expect("keys")["user"], "nobody");
}

#[test]
fn refusals_name_the_field() {
    let group_alone = sc(|s| s.run_as_group = Some(proto::Int64Value { value: 1002 }));
    let e = container_keys(&group_alone, None).expect_err("group alone");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.to_string().contains("run_as_group"), "{e}");
    let privileged = sc(|s| s.privileged = true);
    assert!(container_keys(&privileged, Some(&privileged_sandbox(false))).is_err());
    let keys = container_keys(&privileged, Some(&privileged_sandbox(true))).expect("privileged");
    assert_eq!(keys["privileged"], true);
    let apparmor = sc(|s| s.apparmor = Some(proto::SecurityProfile::default()));
    assert_eq!(container_keys(&apparmor, None).expect_err("apparmor").code(), tonic::Code::Unimplemented);
    let relative = sc(|s| {
        s.seccomp = Some(proto::SecurityProfile {
            profile_type: proto::security_profile::ProfileType::Localhost as i32,
            localhost_ref: "p.json".into(),
        })
    });
    assert!(container_keys(&relative, None).expect_err("relative").to_string().contains("absolute"));
    let selinux = Some(proto::SeLinuxOption { r#type: "t".into(), ..Default::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(selinux_check(&selinux, &dir.path().join("enforce")).is_ok(), "no SELinux: ignored");
    std::fs::write(dir.path().join("enforce"), "1").expect("write");
    assert!(selinux_check(&selinux, &dir.path().join("enforce")).is_err());
}

fn selinux_check(o: &Option<proto::SeLinuxOption>, enforce: &Path) -> Result<(), CriError> {
    selinux(o.as_ref(), enforce)
}

fn sandbox_ns(ns: proto::NamespaceOption) -> Result<SandboxNamespaces, CriError> {
    let config = proto::PodSandboxConfig {
        linux: Some(proto::LinuxPodSandboxConfig {
            security_context: Some(proto::LinuxSandboxSecurityContext {
                namespace_options: Some(ns),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    SandboxNamespaces::of(&config)
}

#[test]
fn sandbox_namespaces() {
    let node = NamespaceMode::Node as i32;
    let ns = sandbox_ns(proto::NamespaceOption { network: node, pid: node, ipc: node, ..Default::default() });
    let ns = ns.expect("host namespaces");
    assert!(ns.host_network && ns.host_pid && ns.host_ipc);
    let mut file = json!({"name": "x"});
    ns.apply(&mut file);
    assert_eq!((file["pid"].clone(), file["ipc"].clone()), (json!("host"), json!("host")));
    let container = NamespaceMode::Container as i32;
    let own = sandbox_ns(proto::NamespaceOption { pid: container, ..Default::default() }).expect("pid CONTAINER");
    assert_eq!(own, SandboxNamespaces::default(), "each container gets its own");
    let target = NamespaceMode::Target as i32;
    let e = sandbox_ns(proto::NamespaceOption { pid: target, ..Default::default() }).expect_err("pid TARGET");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mapping = |c, h, l| proto::IdMapping { container_id: c, host_id: h, length: l };
    let userns = |mode: NamespaceMode, maps: Vec<proto::IdMapping>| proto::NamespaceOption {
        userns_options: Some(proto::UserNamespace { mode: mode as i32, uids: maps.clone(), gids: maps }),
        ..Default::default()
    };
    assert!(sandbox_ns(userns(NamespaceMode::Node, vec![])).is_ok());
    let two = vec![mapping(0, 1000, 100_000), mapping(0, 2000, 100_000)];
    assert!(sandbox_ns(userns(NamespaceMode::Pod, two)).expect_err("two").to_string().contains("exactly one mapping"));
    let not_zero = vec![mapping(1, 1000, 100_000)];
    assert!(sandbox_ns(userns(NamespaceMode::Pod, not_zero)).expect_err("1").to_string().contains("container ID 0"));
    for (mode, name) in [(NamespaceMode::Container, "CONTAINER"), (NamespaceMode::Target, "TARGET")] {
        let e = sandbox_ns(userns(mode, vec![])).expect_err("mode");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains(name) && e.to_string().contains("userns_options"), "{e}");
    }
    for (maps, says) in [
        (vec![mapping(0, 0, 100)], "host_id 0"),
        (vec![mapping(0, 1000, 0)], "length 0"),
        (vec![mapping(0, 4_294_967_000, 1000)], "last valid id"),
    ] {
        let e = sandbox_ns(userns(NamespaceMode::Pod, maps)).expect_err(says);
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.to_string().contains(says) && e.to_string().contains("userns_options.uids"), "{e}");
    }
    let mut lopsided = userns(NamespaceMode::Pod, vec![mapping(0, 1000, 100_000)]);
    if let Some(u) = lopsided.userns_options.as_mut() {
        u.gids[0].length = 65536;
    }
    assert!(sandbox_ns(lopsided).expect_err("lengths").to_string().contains("userns_options.gids"));
    let with_host_net = proto::NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..userns(NamespaceMode::Pod, vec![mapping(0, 1000, 100_000)])
    };
    assert!(sandbox_ns(with_host_net).expect_err("host net").to_string().contains("namespace_options.network NODE"));

    // POD: the mapping, as the pod file's `userns`.
    let one = vec![mapping(0, 1000, 100_000)];
    let ns = sandbox_ns(userns(NamespaceMode::Pod, one)).expect("pod");
    assert_eq!(ns.userns, Some(spec::stage1::IdMap { uid: 1000, gid: 1000, size: 100_000 }));
    let mut file = json!({"name": "x"});
    ns.apply(&mut file);
    let range = json!({"container": 0, "host": 1000, "size": 100_000});
    assert_eq!(file["userns"], json!({"uid": range, "gid": range}));
    let parsed = spec::pod::PodFile::parse(
        json!({"name": "x", "apps": [], "userns": file["userns"]}).to_string().as_bytes(),
        "f",
    )
    .expect("the pod file takes it");
    assert_eq!(parsed.userns, spec::pod::UserNs::Map(ns.userns.expect("map")));
}

#[test]
fn users_from_proc_status() {
    let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t1000 1234 50000 \n";
    let user = parse_user(status).expect("user").linux.expect("linux");
    assert_eq!((user.uid, user.gid, user.supplemental_groups), (1000, 1000, vec![1000, 1234, 50000]));
    assert!(parse_user("Name:\tsh\n").is_none());
}

#[test]
fn container_pid_namespaces() {
    let pid = |mode: NamespaceMode| {
        sc(|s| s.namespace_options = Some(proto::NamespaceOption { pid: mode as i32, ..Default::default() }))
    };
    let keys = container_keys(&pid(NamespaceMode::Container), None).expect("own");
    assert_eq!(keys["pidNamespace"], "own");
    assert!(container_keys(&pid(NamespaceMode::Pod), None).expect("pod").get("pidNamespace").is_none());
    // Without options of its own, the container takes the sandbox's mode.
    let mut sandbox = privileged_sandbox(false);
    let ns = proto::NamespaceOption { pid: NamespaceMode::Container as i32, ..Default::default() };
    sandbox.linux.as_mut().and_then(|l| l.security_context.as_mut()).expect("sc").namespace_options = Some(ns);
    let keys = container_keys(&proto::ContainerConfig::default(), Some(&sandbox)).expect("keys");
    assert_eq!(keys["pidNamespace"], "own");
    let e = container_keys(&pid(NamespaceMode::Node), None).expect_err("node without a host-pid sandbox");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        container_keys(&pid(NamespaceMode::Target), None).expect_err("target").code(),
        tonic::Code::Unimplemented
    );
}
