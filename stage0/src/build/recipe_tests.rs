use super::*;

/// The example from the module documentation.
pub(crate) const REDIS: &str = r#"name: example.com/redis
labels: { version: "7.0" }
app:
  exec: [/usr/bin/redis-server, --protected-mode, "no"]
  user: redis
  group: redis
  workingDirectory: /data
  environment: { FOO: bar }
  ports: [{ name: redis, port: 6379, protocol: tcp }]
  mountPoints: [{ name: data, path: /data }]
rootfs:
  dir: files/
  packages: [redis-server]
  exclude: [adduser]
  users:  [{ name: redis, uid: 100, gid: 101, home: /var/lib/redis, shell: /usr/sbin/nologin }]
  groups: [{ name: redis, gid: 101 }]
  dirs:   [{ path: /data, mode: "0755", owner: redis }]
dependencies: [{ imageName: example.com/base, labels: { version: "1" } }]
pathWhitelist: []
annotations: { authors: "Jane <jane@example.com>" }
"#;

fn parse(text: &str) -> Result<Recipe, BuildError> {
    parse_str(Path::new("/recipes/recipe.yaml"), text)
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(r) => panic!("accepted {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn parses_the_documented_example() {
    let r = parse(REDIS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.rootfs_dir(), Some(PathBuf::from("/recipes/files/")));
    assert_eq!(r.rootfs.packages.len(), 1);
    assert_eq!(r.rootfs.dirs[0].mode, Mode(0o755));
    let m = r.manifest("amd64");
    m.validate().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((m.label("version"), m.label("os"), m.label("arch")), (Some("7.0"), Some("linux"), Some("amd64")));
    let app = m.app.unwrap_or_else(|| panic!("no app"));
    assert_eq!(app.exec, ["/usr/bin/redis-server", "--protected-mode", "no"]);
    assert_eq!((app.user.as_str(), app.ports[0].port, app.ports[0].count), ("redis", 6379, 1));
    assert_eq!(app.environment, [Label { name: "FOO".into(), value: "bar".into() }]);
    assert_eq!(m.dependencies[0].labels[0].value, "1");
    assert_eq!(m.annotations[0].name, "authors");
}

#[test]
fn defaults_and_given_labels() {
    let r = parse("name: example.com/x\nlabels: {arch: aarch64}\napp: {exec: [/bin/x]}\nrootfs: {dirs: [{path: /d, mode: 0750}]}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.rootfs.dirs[0].mode, Mode(0o750), "unquoted 0750 is octal");
    let m = r.manifest("amd64");
    assert_eq!(m.label("arch"), Some("aarch64"));
    let app = m.app.unwrap_or_else(|| panic!("no app"));
    assert_eq!((app.user.as_str(), app.group.as_str()), ("0", "0"));
}

#[test]
fn unknown_field_names_file_line_and_field() {
    let e = err("name: example.com/x\napp:\n  exec: [/bin/x]\n  usr: redis\n");
    assert!(e.starts_with("/recipes/recipe.yaml: line 4 column 3: app: unknown field `usr`"), "{e}");
    let e = err("name: example.com/x\nrootfs:\n  packages: [aa]\n  pakages: [bb]\n");
    assert!(e.contains("line 4 column 3: rootfs: unknown field `pakages`"), "{e}");
}

#[test]
fn bad_values_name_their_field() {
    let e = err("name: Example.com/X\n");
    assert!(e.contains("line 1 column 7: name: invalid name \"Example.com/X\""), "{e}");
    let e = err("name: example.com/x\napp:\n  user: [redis]\n");
    assert!(e.contains("line 3 column 9: app.user: invalid type"), "{e}");
    let e = err("name: example.com/x\nlabels: {a: b, a: c}\n");
    assert!(e.contains("labels: duplicate key \"a\""), "{e}");
    let e = err("name: example.com/x\nrootfs: {dirs: [{path: /d, mode: \"0999\"}]}\n");
    assert!(e.contains("rootfs.dirs[0].mode: \"0999\" is not an octal mode"), "{e}");
    let e = err("name: example.com/x\napp: {ports: [{name: Redis, port: 1}]}\n");
    assert!(e.contains("line 2 column 22: app.ports[0].name: invalid name"), "{e}");
    let e = err("name: example.com/x\nrootfs: {users: [{name: Redis, uid: 1, gid: 1}]}\n");
    assert!(e.contains("rootfs.users[0].name: \"Redis\" is not a user"), "{e}");
    let e = err("name: example.com/x\nrootfs: {packages: [\"a;rm -rf /\"]}\n");
    assert!(e.contains("line 2 column 21: rootfs.packages[0]: invalid Debian package name"), "{e}");
}

#[test]
fn cross_field_errors_name_their_field() {
    let e = err("name: example.com/x\nrootfs: {packages: [curl], exclude: [curl]}\n");
    assert_eq!(e, "/recipes/recipe.yaml: rootfs.exclude[0]: curl is also in rootfs.packages");
    let e = err("name: example.com/x\nrootfs: {users: [{name: a, uid: 1, gid: 1}, {name: b, uid: 1, gid: 1}]}\n");
    assert!(e.ends_with("rootfs.users[1]: duplicate uid 1"), "{e}");
    let e = err("name: example.com/x\nrootfs: {users: [{name: a, uid: 1, gid: 1, home: \"/a:b\"}]}\n");
    assert!(e.contains("rootfs.users[0].home"), "{e}");
    let e = err("name: example.com/x\nrootfs: {dirs: [{path: ../etc}]}\n");
    assert!(e.contains("rootfs.dirs[0].path"), "{e}");
}

#[test]
fn relative_exec_is_rejected_by_manifest_validation() {
    let r = parse("name: example.com/x\napp: {exec: [redis-server]}\n").unwrap_or_else(|e| panic!("{e}"));
    let e = r.manifest("amd64").validate().err().unwrap_or_else(|| panic!("accepted a relative exec"));
    assert!(e.to_string().contains("app.exec[0]"), "{e}");
}

#[test]
fn unix_names() {
    for ok in ["redis", "_apt", "www-data", "a1", "machine$"] {
        assert!(UnixName::new(ok).is_ok(), "{ok}");
    }
    for bad in ["", "Redis", "1abc", "-a", "a:b", "a b", "$", &"a".repeat(33)] {
        assert!(UnixName::new(bad).is_err(), "{bad}");
    }
}
