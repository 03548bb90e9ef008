//! Pod file tests: the shipped example, each error with its line, the
//! hostile-input limits, start order.

use std::time::{Duration, Instant};

use super::*;

const EXAMPLE: &str = include_str!("../../../manifests/web-db.yaml");

fn parse(text: &str) -> Result<PodFile, PodFileError> {
    PodFile::parse(text.as_bytes(), "web-db.yaml")
}

fn ok(text: &str) -> PodFile {
    parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> PodFileError {
    match parse(text) {
        Ok(p) => panic!("accepted: {p:?}\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the error's kind, line, field and part of its message.
#[track_caller]
fn expect(text: &str, kind: PodFileErrorKind, line: usize, field: &str, message: &str) {
    let e = err(text);
    assert_eq!((e.kind, e.line, e.field.as_str()), (kind, Some(line), field), "{e}\n{text}");
    assert!(e.message.contains(message), "{e:?} lacks {message:?}");
}

fn names<'a>(apps: impl IntoIterator<Item = &'a AppSpec>) -> Vec<&'a str> {
    apps.into_iter().map(|a| a.name.as_str()).collect()
}

#[test]
fn example_parses() {
    let p = ok(EXAMPLE);
    assert_eq!(p.name.as_str(), "web-db");
    assert_eq!((p.isolation, &p.network, p.accel), (Isolation::Namespace, &Network::Default, Accel::Auto));
    assert_eq!(names(&p.apps), ["db", "web"]);

    let db = &p.apps[0];
    assert_eq!(db.image.reference, "example.com/redis:7.0");
    let ImageSource::Name { name, labels } = &db.image.source else { panic!("{:?}", db.image) };
    assert_eq!(name.as_str(), "example.com/redis");
    assert_eq!(labels.iter().collect::<Vec<_>>(), [(&"version".to_owned(), &"7.0".to_owned())]);
    assert_eq!(db.readiness, Some(Readiness { probe: Probe::Tcp(6379), timeout: Duration::from_secs(60) }));
    assert_eq!(
        db.mounts,
        [Mount {
            volume: AcName::new("data").unwrap_or_else(|e| panic!("{e}")),
            path: "/data".into(),
            read_only: false,
            propagation: Propagation::Private,
            recursive_read_only: false,
        }]
    );
    assert_eq!(
        (db.restart, db.stop_timeout, db.resources),
        (RestartPolicy::Never, DEFAULT_STOP_TIMEOUT, Resources::default())
    );

    let web = p.app("web").unwrap_or_else(|| panic!("no web"));
    assert_eq!(web.image.name().map(AcIdentifier::as_str), Some("example.com/web"));
    assert_eq!(names(p.apps.iter().filter(|a| web.after.contains(&a.name))), ["db"]);
    assert_eq!(web.after, web.requires);
    assert_eq!(web.env.get("REDIS_ADDR").map(String::as_str), Some("127.0.0.1:6379"));
    assert_eq!(web.ports.len(), 1);
    let port = &web.ports[0];
    assert_eq!((port.name.as_str(), port.host_port, port.protocol), ("http", 8080, Protocol::Tcp));
    assert_eq!(port.host_ip.to_string(), "0.0.0.0");
    assert_eq!(
        web.resources,
        Resources { memory_bytes: Some(128 << 20), cpu_millis: Some(500), pids: Some(256), ..Resources::default() }
    );
    assert_eq!((web.restart, web.stop_timeout), (RestartPolicy::OnFailure, Duration::from_secs(10)));
    assert!(web.exec.is_none() && web.user.is_none() && web.readiness.is_none());

    assert_eq!(p.volumes.len(), 1);
    assert_eq!((p.volumes[0].name.as_str(), &p.volumes[0].kind), ("data", &VolumeKind::Empty));
    assert!(p.annotations.is_empty());
    assert_eq!(names(p.app_order()), ["db", "web"]);
}

#[test]
fn error_names_file_line_column_and_field() {
    let e = err(&EXAMPLE.replace("128Mi", "128Q"));
    assert_eq!(
        e.to_string(),
        "web-db.yaml: line 24, column 26: apps[1].resources.memory: \"128Q\" is not a size (examples: 128Mi, 1Gi)"
    );
    let e = err(&EXAMPLE.replace("stopTimeout: 10s", "stopTimeout: 10"));
    assert_eq!(
        e.to_string(),
        "web-db.yaml: line 26, column 18: apps[1].stopTimeout: \"10\" is not a duration (examples: 500ms, 10s, 2m)"
    );
    let e = err(&EXAMPLE.replace("stopTimeout: 10s", "stopTimeout: 10s\n    startTimeout: soon"));
    assert!(e.to_string().contains("apps[1].startTimeout: \"soon\" is not a duration"), "{e}");
}

#[test]
fn full_syntax() {
    let p = ok("name: p
isolation: vm
accel: tcg
network: my-net
annotations: { example.com/owner: ops }
apps:
  - name: a
    image: ./a.aci
    exec: [/bin/sh, -c, 'echo hi']
    user: '1000'
    group: nobody
    workingDirectory: /srv
    env: { N: 1, B: true }
    readiness: { exec: [/bin/true], timeout: 1m30s }
    ports:
      - { name: dns, host: 53, protocol: udp, hostIP: 127.0.0.1 }
      - { name: dns-tcp, host: 53 }
    resources: { memory: 1Gi, cpu: 0.5, pids: 10 }
    restart: always
    stopTimeout: 500ms
    startTimeout: 2s
    mounts: [{ volume: etc, path: /etc/app, readOnly: true }]
volumes:
  - { name: etc, kind: host, source: /srv/etc, readOnly: true }
");
    assert_eq!((p.isolation, p.accel, &p.network), (Isolation::Vm, Accel::Tcg, &Network::Named("my-net".into())));
    assert_eq!(p.annotations.values().collect::<Vec<_>>(), ["ops"]);
    let a = &p.apps[0];
    assert_eq!(a.image.source, ImageSource::File("./a.aci".into()));
    assert_eq!(a.exec.as_deref(), Some(&["/bin/sh".to_owned(), "-c".into(), "echo hi".into()][..]));
    assert_eq!((a.user.as_deref(), a.group.as_deref()), (Some("1000"), Some("nobody")));
    assert_eq!(a.working_directory.as_deref(), Some("/srv"));
    assert_eq!(a.env.get("N").map(String::as_str), Some("1"));
    assert_eq!(a.env.get("B").map(String::as_str), Some("true"));
    assert_eq!(a.readiness.as_ref().map(|r| r.timeout), Some(Duration::from_secs(90)));
    assert_eq!((a.ports[0].protocol, a.ports[0].host_ip.to_string()), (Protocol::Udp, "127.0.0.1".to_owned()));
    assert_eq!(
        a.resources,
        Resources { memory_bytes: Some(1 << 30), cpu_millis: Some(500), pids: Some(10), ..Resources::default() }
    );
    assert_eq!((a.restart, a.stop_timeout), (RestartPolicy::Always, Duration::from_millis(500)));
    assert_eq!(a.start_timeout, Duration::from_secs(2));
    assert!(a.mounts[0].read_only);
    assert_eq!(p.volumes[0].kind, VolumeKind::Host { source: "/srv/etc".into(), read_only: true });
}

/// A small pod; cases below edit it. Lines: 1 name, 2 network, 3 apps,
/// 4 a.name, 5 a.image, 6 a.mounts, 7 b.name, 8 b.image, 9 b.after,
/// 10 b.ports, 11 volumes, 12 the volume.
const BASE: &str = "name: p
network: default
apps:
  - name: a
    image: example.com/a
    mounts: [{ volume: v, path: /v }]
  - name: b
    image: example.com/b:1,arch=amd64
    after: [a]
    ports: [{ name: http, host: 8080 }]
volumes:
  - { name: v, kind: empty }
";

#[test]
fn base_is_valid() {
    let p = ok(BASE);
    assert_eq!(names(p.app_order()), ["a", "b"]);
}

#[test]
fn semantic_errors_name_their_line() {
    use PodFileErrorKind::{Invalid, Limit};
    let cases: &[(&str, &str, usize, &str, &str)] = &[
        ("name: p", "name: P", 1, "name", "invalid name \"P\""),
        ("network: default", "network: none", 10, "apps[1].ports[0]", "network none"),
        ("network: default", "network: host", 10, "apps[1].ports[0]", "network host"),
        ("network: default", "network: 'a b'", 2, "network", "CNI network name"),
        ("network: default", "isolation: container", 2, "isolation", "not namespace or vm"),
        ("network: default", "accel: hvf", 2, "accel", "not auto, kvm or tcg"),
        ("- name: b", "- name: a", 7, "apps[1].name", "a second app named a"),
        ("- name: b", "- name: B_1", 7, "apps[1].name", "invalid name"),
        ("example.com/b:1,arch=amd64", "'example.com/b:'", 8, "apps[1].image", "empty version"),
        ("example.com/b:1,arch=amd64", "ftp://x/b.aci", 8, "apps[1].image", "not an image reference"),
        ("after: [a]", "after: [c]", 9, "apps[1].after[0]", "no app named c"),
        ("after: [a]", "requires: [a, b]", 9, "apps[1].requires[1]", "cannot depend on itself"),
        ("after: [a]", "after: [a, a]", 9, "apps[1].after[1]", "listed twice"),
        ("host: 8080", "host: 0", 10, "apps[1].ports[0].host", "port 0 is outside 1-65535"),
        ("host: 8080", "host: 70000", 10, "apps[1].ports[0].host", "port 70000 is outside 1-65535"),
        ("host: 8080", "host: http", 10, "apps[1].ports[0].host", "not a port number"),
        ("host: 8080", "host: 8080, protocol: sctp", 10, "apps[1].ports[0].protocol", "not tcp or udp"),
        ("host: 8080", "host: 8080, hostIP: 1.2.3", 10, "apps[1].ports[0].hostIP", "not an IP address"),
        (
            "{ name: http, host: 8080 }",
            "{ name: http, host: 8080 }, { name: x, host: 8080 }",
            10,
            "apps[1].ports[1].host",
            "8080/tcp is already published by apps[1].ports[0]",
        ),
        (
            "volume: v, path: /v",
            "volume: w, path: /v",
            6,
            "apps[0].mounts[0].volume",
            "no volume named w under volumes (v)",
        ),
        ("volume: v, path: /v", "volume: v, path: v", 6, "apps[0].mounts[0].path", "not absolute"),
        ("volume: v, path: /v", "volume: v, path: /v/../etc", 6, "apps[0].mounts[0].path", "contains '..'"),
        ("volume: v, path: /v", "volume: v, path: //", 6, "apps[0].mounts[0].path", "whole root"),
        (
            "path: /v }]",
            "path: /v }, { volume: v, path: /v/ }]",
            6,
            "apps[0].mounts[1].path",
            "already the mount point",
        ),
        ("{ name: v, kind: empty }", "{ name: v, kind: host }", 12, "volumes[0]", "needs source"),
        ("{ name: v, kind: empty }", "{ name: v, kind: host, source: srv }", 12, "volumes[0].source", "not absolute"),
        (
            "{ name: v, kind: empty }",
            "{ name: v, kind: empty, source: /srv }",
            12,
            "volumes[0].source",
            "only host volumes",
        ),
        (
            "{ name: v, kind: empty }",
            "{ name: v, kind: empty, readOnly: true }",
            12,
            "volumes[0].readOnly",
            "set readOnly on the mounts",
        ),
        ("{ name: v, kind: empty }", "{ name: v, kind: tmpfs }", 12, "volumes[0].kind", "not empty or host"),
        (
            "{ name: v, kind: empty }",
            "{ name: v, kind: empty }\n  - { name: v, kind: empty }",
            13,
            "volumes[1].name",
            "a second volume named v",
        ),
        ("after: [a]", "readiness: { tcp: 80, exec: [/bin/true] }", 9, "apps[1].readiness", "exactly one probe"),
        ("after: [a]", "readiness: { timeout: 1s }", 9, "apps[1].readiness", "exactly one probe"),
        ("after: [a]", "readiness: { tcp: 80, timeout: 0s }", 9, "apps[1].readiness.timeout", "zero timeout"),
        ("after: [a]", "readiness: { exec: [./true] }", 9, "apps[1].readiness.exec[0]", "not absolute"),
        ("after: [a]", "exec: []", 9, "apps[1].exec", "empty command"),
        ("after: [a]", "exec: [bin/sh]", 9, "apps[1].exec[0]", "not absolute"),
        ("after: [a]", "exec: [./sh]", 9, "apps[1].exec[0]", "not absolute"),
        ("after: [a]", "exec: ['']", 9, "apps[1].exec[0]", "not absolute"),
        ("after: [a]", "workingDirectory: srv", 9, "apps[1].workingDirectory", "not absolute"),
        ("after: [a]", "user: 'a:b'", 9, "apps[1].user", "not a user or group"),
        ("after: [a]", "env: { 'A=B': x }", 9, "apps[1].env.A=B", "not a variable name"),
        ("after: [a]", "env: { A: \"x\\0y\" }", 9, "apps[1].env.A", "NUL"),
        ("after: [a]", "restart: sometimes", 9, "apps[1].restart", "not never, on-failure or always"),
        ("after: [a]", "stopTimeout: 10x", 9, "apps[1].stopTimeout", "not a duration"),
        ("after: [a]", "resources: { memory: 12k }", 9, "apps[1].resources.memory", "below 1Mi"),
        ("after: [a]", "resources: { memory: -1 }", 9, "apps[1].resources.memory", "not a size"),
        ("after: [a]", "resources: { cpu: 0.0001 }", 9, "apps[1].resources.cpu", "finer than"),
        ("after: [a]", "resources: { cpu: 0m }", 9, "apps[1].resources.cpu", "zero"),
        ("after: [a]", "resources: { pids: 1.5 }", 9, "apps[1].resources.pids", "not a whole number"),
        ("after: [a]", "resources: { pids: 0 }", 9, "apps[1].resources.pids", "zero"),
        ("network: default", "annotations: { Bad: x }", 2, "annotations.Bad", "invalid name"),
    ];
    for &(from, to, line, field, message) in cases {
        assert!(BASE.contains(from), "{from}");
        expect(&BASE.replacen(from, to, 1), Invalid, line, field, message);
    }
    let long = format!("name: {}", "a".repeat(64));
    expect(&BASE.replacen("name: p", &long, 1), Invalid, 1, "name", "hostname: at most 63 bytes");
    ok(&BASE.replacen("name: p", &long[..long.len() - 1], 1));
    let many: String = (0..=MAX_APPS).map(|i| format!("  - {{ name: a{i}, image: x }}\n")).collect();
    expect(&format!("name: p\napps:\n{many}"), Limit, 2, "apps", "257 entries; the limit is 256");
    // A sandbox: no apps, held until stopped.
    assert!(ok("name: p\napps: []\n").apps.is_empty());
}

#[test]
fn other_hosts_and_protocols_share_a_port() {
    let two = "{ name: http, host: 8080 }, { name: x, host: 8080, protocol: udp }";
    ok(&BASE.replacen("{ name: http, host: 8080 }", two, 1));
    let two = "{ name: http, host: 80, hostIP: 127.0.0.1 }, { name: x, host: 80, hostIP: 127.0.0.2 }";
    ok(&BASE.replacen("{ name: http, host: 8080 }", two, 1));
    let two = "{ name: http, host: 80, hostIP: 127.0.0.1 }, { name: x, host: 80 }";
    let e = err(&BASE.replacen("{ name: http, host: 8080 }", two, 1));
    assert!(e.message.contains("already published"), "{e}");
}

#[test]
fn schema_errors_carry_serde_positions() {
    use PodFileErrorKind::Schema;
    expect(&BASE.replacen("after: [a]", "afer: [a]", 1), Schema, 9, "apps[1]", "unknown field `afer`");
    expect(&BASE.replacen("network: default", "netwrk: default", 1), Schema, 2, "", "unknown field `netwrk`");
    expect(
        &BASE.replacen("host: 8080", "host: 8080, hostIp: ::1", 1),
        Schema,
        10,
        "apps[1].ports[0]",
        "unknown field `hostIp`",
    );
    expect(&BASE.replacen("after: [a]", "after: a", 1), Schema, 9, "apps[1].after", "invalid type");
    expect(&BASE.replacen("    image: example.com/a\n", "", 1), Schema, 4, "apps[0]", "missing field `image`");
    let e = err(&BASE.replacen("after: [a]", "afer: [a]", 1));
    assert!(
        e.to_string().starts_with("web-db.yaml: line 9, column 5: apps[1]: unknown field `afer`, expected one of"),
        "{e}"
    );
    expect("- a\n- b\n", Schema, 1, "", "expected a pod");
}

#[test]
fn cycle_is_named_in_order() {
    let text = "name: p
apps:
  - { name: a, image: x, after: [c] }
  - { name: b, image: x, requires: [a] }
  - { name: c, image: x, after: [b] }
  - { name: d, image: x, after: [a] }
";
    let e = err(text);
    assert_eq!(e.kind, PodFileErrorKind::Cycle);
    assert_eq!(e.message, "apps form a cycle: a -> c -> b -> a");
    // The edge that closes the cycle: b requires a.
    assert_eq!((e.line, e.field.as_str()), (Some(4), "apps[1].requires[0]"));
    let two = "name: p\napps:\n  - { name: a, image: x, requires: [b] }\n  - { name: b, image: x, after: [a] }\n";
    assert_eq!(err(two).message, "apps form a cycle: a -> b -> a");
}

#[test]
fn app_order_puts_dependencies_first_then_file_order() {
    let text = "name: p
apps:
  - { name: web, image: x, after: [db], requires: [cache] }
  - { name: cache, image: x }
  - { name: worker, image: x, requires: [db] }
  - { name: db, image: x }
  - { name: tool, image: x }
";
    let p = ok(text);
    assert_eq!(names(p.app_order()), ["cache", "db", "web", "worker", "tool"]);
    // Repeatable: the order depends only on the file.
    assert_eq!(names(ok(text).app_order()), names(p.app_order()));
    // A hand-built cycle still yields every app once.
    let mut q = p.clone();
    let web = q.apps[0].name.clone();
    q.apps[1].after.push(web);
    assert_eq!(q.app_order().len(), 5);
}

#[test]
fn yaml_limits_and_syntax() {
    use PodFileErrorKind::{Limit, Syntax, TooLarge};
    let big = format!("name: p\n#{}\n", "x".repeat(MAX_POD_FILE_BYTES));
    let e = err(&big);
    assert_eq!((e.kind, e.line), (TooLarge, None));
    assert!(e.to_string().starts_with("web-db.yaml: the file is "), "{e}");

    let e = PodFile::parse(b"name: p\napps: \xff\n", "x.yaml").err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!((e.kind, e.line), (Syntax, Some(2)));

    let e = err("name: p\napps: [\n");
    assert_eq!(e.kind, Syntax);
    assert!(e.line.is_some(), "{e}");
    expect("name: p\nname: q\napps: []\n", Syntax, 2, "name", "duplicate key \"name\"");
    expect(&BASE.replacen("after: [a]", "env: { A: 1, A: 2 }", 1), Syntax, 9, "apps[1].env.A", "duplicate key");
    expect(&format!("{BASE}---\nname: q\n"), Syntax, 13, "", "second YAML document");
    expect("name: p\napps:\n  - { ? [x] : y }\n", Syntax, 3, "apps[0]", "plain strings");
    assert_eq!(err("").kind, PodFileErrorKind::Schema);
    assert!(err("# nothing\n").message.contains("empty"));

    for depth in [40, 10_000] {
        let deep = format!("name: p\napps: {}{}\n", "[".repeat(depth), "]".repeat(depth));
        let e = err(&deep);
        assert_eq!((e.kind, e.line), (Limit, Some(2)), "{e}");
        assert!(e.message.contains("nested deeper than 32"), "{e}");
    }
    let block: String = (0..40).map(|i| format!("{}- \n", "  ".repeat(i))).collect();
    assert_eq!(err(&format!("name: p\napps:\n{block}")).kind, Limit);

    let long = BASE.replacen("example.com/a", &"a".repeat(MAX_SCALAR_BYTES + 1), 1);
    expect(&long, Limit, 5, "apps[0].image", "the limit is 65536");

    let nodes: String = (0..MAX_NODES).map(|_| "0,").collect();
    let e = err(&format!("name: p\napps: [{nodes}]\n"));
    assert_eq!(e.kind, Limit);
    assert!(e.message.contains("more than 100000 YAML nodes"), "{e}");
}

#[test]
fn alias_bomb_is_refused_quickly() {
    // The "billion laughs": nine levels of nine aliases, 9^9 strings when
    // expanded. serde_yaml would replay every alias; the pre-scan stops it.
    let mut text = String::from("name: p\nannotations:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        let refs = vec![format!("*a{p}"); 9].join(", ");
        text.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    text.push_str("apps: [{ name: a, image: x, exec: *a9 }]\n");
    let start = Instant::now();
    let e = err(&text);
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(e.kind, PodFileErrorKind::Limit, "{e}");
    assert!(e.message.contains("alias bomb"), "{e}");
    assert_eq!(e.line, Some(8), "{e}");

    // One big string named many times is a bomb in bytes.
    let big = "x".repeat(60_000);
    let refs = vec!["*s"; 100].join(", ");
    let e = err(&format!("name: p\napps: [{{ name: a, image: x, exec: [/b, &s {big}, {refs}] }}]\n"));
    assert_eq!(e.kind, PodFileErrorKind::Limit, "{e}");

    // An alias inside the node it names.
    let e = err("name: p\napps: &a [*a]\n");
    assert!(e.message.contains("inside the node"), "{e}");

    // Aliases of modest size are fine.
    let shared = "name: p
apps:
  - { name: a, image: x, env: &env { A: '1', B: '2' } }
  - { name: b, image: x, env: *env }
";
    let p = ok(shared);
    assert_eq!(p.apps[0].env, p.apps[1].env);
}

#[test]
fn positions_follow_block_and_flow_styles() {
    let text = "name: p\napps:\n  -\n    name: a\n    image: x\n    resources:\n      cpu:   half\n";
    let e = err(text);
    assert_eq!((e.line, e.column, e.field.as_str()), (Some(7), Some(14), "apps[0].resources.cpu"));
    let e = err("{name: p, apps: [{name: a, image: x, stopTimeout: \"1y\"}]}");
    assert_eq!((e.line, e.column, e.field.as_str()), (Some(1), Some(51), "apps[0].stopTimeout"));
}

#[test]
fn privileges_default_and_override() {
    use crate::security::{parse_cap, CapSet, SeccompSpec as Seccomp, DEFAULT_CAPS};
    let p = ok(BASE);
    let a = &p.apps[0];
    assert_eq!((a.capabilities, a.seccomp.clone(), a.read_only_root_fs), (DEFAULT_CAPS, Seccomp::Default, false));
    let text = BASE.replacen(
        "after: [a]",
        "after: [a]\n    capabilities: { add: [CAP_NET_ADMIN], drop: [mknod] }\n    seccomp: unconfined\n    readOnlyRootFS: true",
        1,
    );
    let b = ok(&text).apps.remove(1);
    let (admin, mknod) = (parse_cap("NET_ADMIN").expect("cap"), parse_cap("MKNOD").expect("cap"));
    assert!(b.capabilities.contains(admin) && !b.capabilities.contains(mknod));
    assert_eq!(
        b.capabilities.without(CapSet::from_bits(1 << admin)),
        DEFAULT_CAPS.without(CapSet::from_bits(1 << mknod))
    );
    assert_eq!((b.seccomp, b.read_only_root_fs), (Seccomp::Unconfined, true));

    use PodFileErrorKind::{Invalid, Schema};
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "capabilities: { add: [NET_ADMIN, CAP_FLY] }",
            9,
            "apps[1].capabilities.add[1]",
            "\"CAP_FLY\" is not a capability",
        ),
        ("capabilities: { add: [KILL], drop: [KILL] }", 9, "apps[1].capabilities.drop[0]", "both added and dropped"),
        (
            "capabilities:\n      drop:\n        - CHOWN\n        - nope",
            12,
            "apps[1].capabilities.drop[1]",
            "not a capability",
        ),
        ("seccomp: strict", 9, "apps[1].seccomp", "\"strict\" is not default, unconfined or the absolute path"),
    ];
    for &(to, line, field, message) in cases {
        expect(&BASE.replacen("after: [a]", to, 1), Invalid, line, field, message);
    }
    let e = err(&BASE.replacen("after: [a]", "capabilities: { keep: [KILL] }", 1));
    assert_eq!((e.kind, e.line), (Schema, Some(9)), "{e}");
    let e = err(&BASE.replacen("after: [a]", "readOnlyRootFS: maybe", 1));
    assert_eq!((e.kind, e.line), (Schema, Some(9)), "{e}");
}

#[test]
fn userns_field() {
    let base = "name: p\nnetwork: none\napps:\n  - { name: a, image: ./a.aci }\n";
    assert_eq!(ok(base).userns, UserNs::Host);
    assert_eq!(ok(&format!("userns: host\n{base}")).userns, UserNs::Host);
    assert_eq!(ok(&format!("userns: auto\n{base}")).userns, UserNs::Auto);
    let e = err(&format!("userns: keep-id\n{base}"));
    assert_eq!((e.kind, e.line, e.field.as_str()), (PodFileErrorKind::Invalid, Some(1), "userns"), "{e}");
    assert!(e.message.contains("not host, auto or a mapping"), "{e}");
    for other in ["isolation: vm", "network: host"] {
        let text = format!("{other}\nuserns: auto\n{}", base.replace("network: none\n", ""));
        let e = err(&text);
        assert_eq!((e.line, e.field.as_str()), (Some(2), "userns"), "{e}");
    }
}

#[test]
fn userns_mapping() {
    let base = "name: p\nnetwork: none\napps:\n  - { name: a, image: ./a.aci }\n";
    let map = |uid: &str, gid: &str| {
        format!("userns:\n  uid: {{ container: 0, {uid} }}\n  gid: {{ container: 0, {gid} }}\n{base}")
    };
    let m = ok(&map("host: 1000, size: 100000", "host: 2000, size: 100000")).userns;
    assert_eq!(m, UserNs::Map(crate::stage1::IdMap { uid: 1000, gid: 2000, size: 100_000 }));
    assert!(m.own() && UserNs::Auto.own() && !UserNs::Host.own());
    use PodFileErrorKind::Invalid;
    for (uid, gid, line, field, says) in [
        ("host: 0, size: 10", "host: 1, size: 10", 2, "userns.uid.host", "host id 0"),
        ("host: 1000, size: 0", "host: 1, size: 10", 2, "userns.uid.size", "empty range"),
        ("host: 1000, size: 10", "host: 1000, size: 11", 3, "userns.gid.size", "must be the uid range's"),
        ("host: 4294967290, size: 10", "host: 1, size: 10", 2, "userns.uid.size", "last valid host id"),
        ("host: x, size: 10", "host: 1, size: 10", 2, "userns.uid.host", "not an id"),
    ] {
        let e = err(&map(uid, gid));
        assert_eq!((e.kind, e.line, e.field.as_str()), (Invalid, Some(line), field), "{e}");
        assert!(e.message.contains(says), "{e}");
    }
    let e = err(&map("host: 1000, size: 10", "host: 1, size: 10").replacen("container: 0", "container: 1", 1));
    assert_eq!((e.line, e.field.as_str()), (Some(2), "userns.uid.container"), "{e}");
    assert!(e.message.contains("container: 0"), "{e}");
    // A key it does not know, or half a mapping: refused by the schema.
    let e = err(&format!("userns: {{ uid: {{ container: 0, host: 1, size: 1 }} }}\n{base}"));
    assert_eq!(e.kind, PodFileErrorKind::Schema, "{e}");
    let e = err(&map("host: 1, size: 1, extra: 1", "host: 1, size: 1"));
    assert_eq!(e.kind, PodFileErrorKind::Schema, "{e}");
    let e = err(&format!("userns: [auto]\n{base}"));
    assert!(e.message.contains("userns: host, auto, or"), "{e}");
    // What goes with auto goes with a mapping.
    let e = err(&map("host: 1000, size: 10", "host: 1000, size: 10").replace("network: none", "network: host"));
    assert_eq!(e.field, "userns", "{e}");
}

#[test]
fn security_keys_and_host_namespaces() {
    use crate::security::{AppSecurity, CapSet, GroupsPolicy, SeccompSpec};
    let p = ok(BASE);
    assert_eq!((p.host_pid, p.host_ipc, &p.apps[0].security), (false, false, &AppSecurity::default()));
    let text = BASE.replacen(
        "after: [a]",
        "after: [a]\n    seccomp: /etc/p.json\n    supplementaryGroups: [1234, 5678]\n    supplementaryGroupsPolicy: strict\n    \
         noNewPrivileges: false\n    maskedPaths: [/bin/ls]\n    readonlyPaths: [/tmp]\n    pidNamespace: own",
        1,
    );
    let b = ok(&text).apps.remove(1);
    assert_eq!(b.seccomp, SeccompSpec::Localhost("/etc/p.json".into()));
    let s = &b.security;
    assert_eq!((s.supplementary_groups.as_slice(), s.groups_policy), (&[1234, 5678][..], GroupsPolicy::Strict));
    assert!(!s.no_new_privileges && s.own_pid_namespace);
    assert_eq!((s.masked(), s.readonly()), (vec!["/bin/ls".to_owned()], vec!["/tmp".to_owned()]));
    let privileged = ok(&BASE.replacen("after: [a]", "privileged: true\n    seccomp: default", 1)).apps.remove(1);
    assert_eq!((privileged.capabilities, privileged.seccomp), (CapSet::ALL, SeccompSpec::Unconfined));
    assert!(privileged.security.masked().is_empty() && privileged.security.readonly().is_empty());
    let host = ok(&format!("pid: host\nipc: host\n{BASE}"));
    assert!(host.host_pid && host.host_ipc);

    use PodFileErrorKind::Invalid;
    expect(
        &BASE.replacen("after: [a]", "supplementaryGroups: [wheel]", 1),
        Invalid,
        9,
        "apps[1].supplementaryGroups[0]",
        "not a gid",
    );
    expect(
        &BASE.replacen("after: [a]", "maskedPaths: [bin/ls]", 1),
        Invalid,
        9,
        "apps[1].maskedPaths[0]",
        "not absolute",
    );
    let e = err(&format!("pid: container\n{BASE}"));
    assert_eq!((e.line, e.field.as_str()), (Some(1), "pid"), "{e}");
    let e = err(&format!("ipc: host\nisolation: vm\n{BASE}"));
    assert!(e.message.contains("namespace pods"), "{e}");
    let e = err(&format!("pid: host\nuserns: auto\n{BASE}"));
    assert!(e.message.contains("userns: auto"), "{e}");
    let e = err(&format!("userns: auto\n{}", BASE.replacen("after: [a]", "pidNamespace: own", 1)));
    assert_eq!(e.field, "apps[1].pidNamespace", "{e}");
}

#[test]
fn a_bare_program_name_is_looked_up_in_path() {
    let p = ok("name: p\napps: [{ name: a, image: ./a.aci, exec: [sh, -c, 'echo hi'] }]\n");
    assert_eq!(p.apps[0].exec.as_deref(), Some(&["sh".to_owned(), "-c".to_owned(), "echo hi".to_owned()][..]));
}

#[test]
fn log_and_stdin() {
    use crate::stdio::{AppLog, LogFormat};
    let base = "name: p\napps:\n  - name: a\n    image: x\n";
    let vols = "volumes:\n  - { name: logs, kind: host, source: /var/log/pods/x }\n  - { name: ro, kind: host, source: /srv, readOnly: true }\n";
    let a = ok(base).apps.remove(0);
    assert_eq!((a.log, a.stdin, a.tty), (None, false, false));
    let text = format!(
        "{base}    log: {{ volume: logs, path: c/0.log, format: cri }}\n    stdin: true\n    terminal: true\n{vols}"
    );
    let a = ok(&text).apps.remove(0);
    let want = AppLog { volume: AcName::new("logs").expect("name"), path: "c/0.log".into(), format: LogFormat::Cri };
    assert_eq!((a.log, a.stdin, a.tty), (Some(want), true, true));
    let e = err(&format!("{base}    terminal: maybe\n"));
    assert!(e.field.contains("terminal") || e.message.contains("terminal"), "{e}");
    let raw = ok(&format!("{base}    log: {{ volume: logs, path: a.log }}\n{vols}")).apps.remove(0);
    assert_eq!(raw.log.map(|l| l.format), Some(LogFormat::Raw));
    for (log, field, message) in [
        ("{ volume: nope, path: a.log }", "apps[0].log.volume", "no volume named nope"),
        ("{ volume: ro, path: a.log }", "apps[0].log.volume", "read-only"),
        ("{ volume: logs, path: /abs.log }", "apps[0].log.path", "not a relative path"),
        ("{ volume: logs, path: ../up.log }", "apps[0].log.path", "no '..'"),
        ("{ volume: logs, path: a.log, format: json }", "apps[0].log.format", "not raw or cri"),
    ] {
        let e = err(&format!("{base}    log: {log}\n{vols}"));
        assert_eq!(e.field, field, "{log}: {e}");
        assert!(e.message.contains(message), "{log}: {e}");
    }
}

#[test]
fn devices() {
    let base = "name: p\napps:\n  - name: a\n    image: x\n";
    let a = ok(&format!("{base}    devices: [{{ host: /dev/null, path: /dev/mynull }}, {{ host: /dev/zero, path: /z, permissions: r }}]\n")).apps.remove(0);
    let want = [("/dev/null", "/dev/mynull", "rwm"), ("/dev/zero", "/z", "r")];
    let got: Vec<_> = a.devices.iter().map(|d| (d.host.as_str(), d.path.as_str(), d.permissions.as_str())).collect();
    assert_eq!(got, want);
    for (dev, field, message) in [
        ("{ host: dev/null, path: /x }", "apps[0].devices[0].host", "not absolute"),
        ("{ host: /dev/null, path: x }", "apps[0].devices[0].path", "not absolute"),
        ("{ host: /dev/null, path: / }", "apps[0].devices[0].path", "root"),
        ("{ host: /dev/null, path: /x, permissions: rx }", "apps[0].devices[0].permissions", "r, w and m"),
        ("{ host: /dev/null, path: /x, permissions: rr }", "apps[0].devices[0].permissions", "r, w and m"),
    ] {
        let e = err(&format!("{base}    devices: [{dev}]\n"));
        assert_eq!(e.field, field, "{dev}: {e}");
        assert!(e.message.contains(message), "{dev}: {e}");
    }
    let e = err(&format!("{base}    devices: [{{ host: /dev/null, path: /x }}, {{ host: /dev/zero, path: /x }}]\n"));
    assert_eq!(e.field, "apps[0].devices[1].path", "{e}");
}
