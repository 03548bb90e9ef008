//! Unit format tests: quoting, durations, parsing every key, errors with
//! file, line and key, and render/parse round trips.

use super::*;

fn words(s: &str) -> Vec<String> {
    split_words(s).expect(s)
}

#[test]
fn quoting() {
    assert_eq!(
        words(r#"/bin/redis --port 6379 "arg with spaces""#),
        ["/bin/redis", "--port", "6379", "arg with spaces"]
    );
    assert_eq!(words("  a\t b  "), ["a", "b"]);
    assert_eq!(words(r#"'it"s' "it's" "" ''"#), ["it\"s", "it's", "", ""]);
    assert_eq!(words(r#"a\sb "x\ny" \x41\t 'q\'q' \\"#), ["a b", "x\ny", "A\t", "q'q", "\\"]);
    assert_eq!(words(r#""\xc3\xa9" é $HOME %n"#), ["é", "é", "$HOME", "%n"]);
    assert_eq!(words(""), Vec::<String>::new());
    for (bad, e) in [
        (r#""open"#, QuoteError::Unterminated),
        (r#""a"b"#, QuoteError::AfterQuote),
        (r#"a"b""#, QuoteError::InWord),
        (r#"don't"#, QuoteError::InWord),
        ("a\\", QuoteError::TrailingBackslash),
        (r"\q", QuoteError::BadEscape('q')),
        (r"\x4", QuoteError::BadEscape('x')),
        (r"\x00", QuoteError::Nul),
        (r"\xff", QuoteError::Utf8),
    ] {
        assert_eq!(split_words(bad), Err(e), "{bad}");
    }
}

#[test]
fn quote_round_trip() {
    let cases = [
        "plain",
        "",
        "two words",
        "it's",
        "say \"hi\"",
        "back\\slash",
        "tab\there",
        "nl\nx",
        "\u{1}\u{85}",
        "é",
        "$x%",
    ];
    for case in cases {
        assert_eq!(words(&quote_word(case)), [case], "{case:?} -> {}", quote_word(case));
    }
    assert_eq!(quote_word("plain"), "plain");
    assert_eq!(words(&join_words(&cases)), cases);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1"), Some(Duration::from_secs(1)));
    assert_eq!(parse_duration("0.05"), Some(Duration::from_millis(50)));
    assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("1.5ms"), Some(Duration::from_micros(1500)));
    for bad in ["", "-1", "1e3", ".5", "1.", "x", "1min", "31536001", "0.0000000001"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    for d in [Duration::ZERO, Duration::from_millis(1500), Duration::new(3, 1), Duration::from_secs(30)] {
        assert_eq!(parse_duration(&render_duration(d)), Some(d));
    }
    assert_eq!(render_duration(Duration::from_millis(100)), "0.1");
}

const FULL: &str = r#"
# redis, started after db
[Unit]
Description = redis cache
After=db
After=other
Requires=db
[Service]
ExecStartPre=/bin/prepare "a b"
ExecStart=/usr/bin/redis-server --port 6379 "arg with spaces"
ExecStopPost=clean-up
Environment="REDIS_ADDR=127.0.0.1:6379" "B=2"
Environment=B=3 C=
WorkingDirectory=/data
User=redis
Group=1000
SupplementaryGroups=audio 44
Restart=on-failure
RestartSec=0.5
TimeoutStopSec=3
TimeoutStartSec=2.5
; a comment
[X-Pod]
ReadinessExec=redis-cli ping
ReadinessTimeoutSec=5
"#;

#[test]
fn parse_full() {
    let u = Unit::parse(FULL, "redis.unit").expect("parse");
    assert_eq!(u.description.as_deref(), Some("redis cache"));
    assert_eq!(u.after.iter().map(AcName::as_str).collect::<Vec<_>>(), ["db", "other"]);
    assert_eq!(u.dependencies().len(), 2);
    assert_eq!(u.exec_start[3], "arg with spaces");
    assert_eq!(u.exec_start_pre, Some(vec!["/bin/prepare".to_owned(), "a b".to_owned()]));
    assert_eq!(u.exec_stop_post, Some(vec!["clean-up".to_owned()]));
    assert_eq!(u.timeout_start, Duration::from_millis(2500));
    let env: Vec<(&str, &str)> = u.environment.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(env, [("REDIS_ADDR", "127.0.0.1:6379"), ("B", "3"), ("C", "")]);
    assert_eq!((u.user.as_deref(), u.group.as_deref()), (Some("redis"), Some("1000")));
    assert_eq!(u.supplementary_groups, ["audio", "44"]);
    assert_eq!(
        (u.restart, u.restart_sec, u.timeout_stop),
        (Restart::OnFailure, Duration::from_millis(500), Duration::from_secs(3))
    );
    let r = u.readiness.as_ref().expect("readiness");
    assert_eq!(r.check, ReadinessCheck::Exec(vec!["redis-cli".into(), "ping".into()]));
    assert_eq!(r.timeout, Duration::from_secs(5));
    assert_eq!(Unit::parse(&u.render(), "rendered").expect("round trip"), u);
}

#[test]
fn defaults_and_round_trip() {
    let u = Unit::parse("[Service]\nExecStart=sleep 1\n[X-Pod]\nReadinessTCP=6379\n", "a.unit").expect("parse");
    assert_eq!((u.restart, u.restart_sec, u.timeout_stop), (Restart::No, DEFAULT_RESTART_SEC, DEFAULT_TIMEOUT_STOP));
    let r = u.readiness.as_ref().expect("readiness");
    assert_eq!(
        (r.check.clone(), r.timeout),
        (ReadinessCheck::Tcp(([127, 0, 0, 1], 6379).into()), DEFAULT_READINESS_TIMEOUT)
    );
    assert_eq!(Unit::parse(&u.render(), "r").expect("round trip"), u);

    let shared = Unit::parse("[Service]\nExecStart=x\n[X-Pod]\nSharedMounts=/m \"/a b\"\n", "s.unit").expect("parse");
    assert_eq!(shared.shared_mounts, ["/m", "/a b"]);
    assert_eq!(Unit::parse(&shared.render(), "r").expect("round trip"), shared);
    let adj = Unit::parse("[Service]\nExecStart=sleep 1\nOOMScoreAdjust=-997\n", "o.unit").expect("parse");
    assert_eq!(adj.oom_score_adjust, Some(-997));
    assert_eq!(Unit::parse(&adj.render(), "r").expect("round trip"), adj);
    let e = Unit::parse("[Service]\nExecStart=sleep 1\nOOMScoreAdjust=1001\n", "o.unit").expect_err("range");
    assert!(e.to_string().contains("-1000 to 1000"), "{e}");
    let limited = Unit::parse("[Service]\nExecStart=x\nMemoryMax=33554432\nCPUQuota=50%\n", "l.unit").expect("parse");
    assert_eq!(
        (limited.limits.memory_max, limited.limits.cpu_millis, limited.limits.tasks_max),
        (Some(33_554_432), Some(500), None)
    );
    assert_eq!(Unit::parse(&limited.render(), "r").expect("round trip"), limited);
    let e = Unit::parse("[Service]\nExecStart=x\nMemoryMax=1\nMemoryMax=2\n", "l.unit").expect_err("twice");
    assert!(e.to_string().contains("MemoryMax"), "{e}");
    let e = Unit::parse("[Service]\nExecStart=x\nCPUQuota=half\n", "l.unit").expect_err("bad");
    assert!(e.to_string().contains("percentage") && e.to_string().contains("l.unit"), "{e}");

    let mut odd = Unit::new(vec!["/bin/sh".into(), "-c".into(), "echo \"$1\" 'x'\n\\".into(), String::new()]);
    odd.description = Some(String::new());
    odd.environment = vec![("A".into(), "with space \"and\" 'quotes'".into()), ("E".into(), String::new())];
    odd.after = vec![AcName::new("db").expect("name")];
    odd.working_directory = Some("/srv/my data".into());
    odd.restart = Restart::Always;
    odd.restart_sec = Duration::ZERO;
    odd.cgroups = vec!["/cgroup/odd/0".into(), "/cgroup/with space".into()];
    odd.readiness = Some(Readiness {
        check: ReadinessCheck::Tcp("[::1]:80".parse().expect("addr")),
        timeout: Duration::from_millis(1),
    });
    let text = odd.render();
    assert_eq!(Unit::parse(&text, "odd").expect(&text), odd);
    assert_eq!(Unit::parse(&Unit::new(vec!["x".into()]).render(), "n").expect("n"), Unit::new(vec!["x".into()]));
}

#[test]
fn errors_name_file_line_and_key() {
    let cases = [
        ("[Service]\nExecStart=/bin/x\nRestart=sometimes\n", "u.unit:3: Restart: invalid value \"sometimes\": expected no, on-failure or always"),
        ("[Service]\nExecStart=/bin/x\nBogus=1\n", "u.unit:3: Bogus: unknown key in [Service]"),
        ("[Install]\n", "u.unit:1: unknown section [Install] (known: [Unit], [Service], [X-Pod])"),
        ("ExecStart=/bin/x\n", "u.unit:1: ExecStart: key outside of any section"),
        ("[Service]\nExecStart=/bin/x\nExecStart=/bin/y\n", "u.unit:3: ExecStart: given twice"),
        ("[Service]\nExecStart=\"/bin/x\n", "u.unit:2: ExecStart: unterminated quote"),
        ("[Unit]\nAfter=Db\n[Service]\nExecStart=x\n", "u.unit:2: After: invalid name \"Db\": a name is lowercase letters and digits separated by single '-'"),
        ("[Unit]\nDescription=x\n", "u.unit: ExecStart in [Service] is required"),
        ("[Service]\nExecStart=bin/x\n", "u.unit:2: ExecStart: invalid value \"bin/x\": the program must be an absolute path or a bare name looked up in PATH"),
        ("[Service]\nExecStart=x\nExecStartPre=-/bin/y\n", "u.unit:3: ExecStartPre: invalid value \"-/bin/y\": systemd command prefixes (-@+!:) are not supported"),
        ("[Service]\nExecStart=x\nExecStopPost=a\nExecStopPost=b\n", "u.unit:4: ExecStopPost: given twice"),
        ("[Service]\nExecStart=x\nTimeoutStartSec=0\n", "u.unit:3: TimeoutStartSec: invalid value \"0\": expected a positive number of seconds, at most a year"),
        ("[Service]\nExecStart=-/bin/x\n", "u.unit:2: ExecStart: invalid value \"-/bin/x\": systemd command prefixes (-@+!:) are not supported"),
        ("[Service]\nExecStart=x\nEnvironment=1A=b\n", "u.unit:3: Environment: invalid value \"1A=b\": expected NAME=VALUE"),
        ("[Service]\nExecStart=x\nTimeoutStopSec=0\n", "u.unit:3: TimeoutStopSec: invalid value \"0\": expected a positive number of seconds, at most a year"),
        ("[Service]\nExecStart=x\nWorkingDirectory=data\n", "u.unit:3: WorkingDirectory: invalid value \"data\": expected an absolute path"),
        ("[Service]\nExecStart=x\nUser=a b\n", "u.unit:3: User: invalid value \"a b\": expected a user or group name, or a numeric id"),
        ("[Service]\nExecStart=x\n[X-Pod]\nReadinessTCP=0\n", "u.unit:4: ReadinessTCP: invalid value \"0\": expected PORT (meaning 127.0.0.1:PORT) or ADDR:PORT"),
        ("[Service]\nExecStart=x\n[X-Pod]\nReadinessTCP=1\nReadinessExec=true\n", "u.unit:5: ReadinessExec: invalid value \"true\": ReadinessTCP and ReadinessExec exclude each other"),
        ("[Service]\nExecStart=x\n[X-Pod]\nCgroup=/a ../b\n", "u.unit:4: Cgroup: invalid value \"../b\": expected an absolute path"),
        ("[Service]\nExecStart=x\n[X-Pod]\nReadinessTimeoutSec=3\n", "u.unit:4: ReadinessTimeoutSec: invalid value \"3\": needs ReadinessTCP or ReadinessExec"),
        ("[Service]\nExecStart x\n", "u.unit:2: expected `[Section]`, `Key=Value`, a comment or an empty line"),
    ];
    for (text, want) in cases {
        let got = Unit::parse(text, "u.unit").map(|_| ()).expect_err(text);
        assert_eq!(got.to_string(), want);
    }
    // No trailing comments, as in systemd: `#` after a value is part of it.
    let u = Unit::parse("[Service]\nExecStart=/bin/echo # not a comment\n", "u").expect("parse");
    assert_eq!(u.exec_start, ["/bin/echo", "#", "not", "a", "comment"]);
    let big = "#".repeat(MAX_UNIT_BYTES + 1);
    assert!(matches!(Unit::parse(&big, "u").map(|_| ()).expect_err("big").kind, UnitErrorKind::TooLarge { .. }));
}

#[test]
fn list_resets() {
    let u =
        Unit::parse("[Unit]\nAfter=a\nAfter=\nAfter=b\n[Service]\nExecStart=x\nEnvironment=A=1\nEnvironment=\n", "u")
            .expect("parse");
    assert_eq!(u.after.len(), 1);
    assert!(u.environment.is_empty());
}

#[test]
fn capabilities_and_seccomp_filters() {
    let u = Unit::parse("[Service]\nExecStart=x\n", "u").expect("parse");
    assert_eq!((u.capabilities, u.seccomp_filters.len()), (DEFAULT_CAPS, 0), "secure defaults when absent");
    let text =
        "[Service]\nExecStart=x\n[X-Pod]\nCapabilities=CAP_KILL net_admin\nSeccompFilter=/units/a.bpf /units/b.bpf\n";
    let u = Unit::parse(text, "u").expect("parse");
    assert_eq!(u.capabilities.names(), ["CAP_KILL", "CAP_NET_ADMIN"]);
    assert_eq!(u.seccomp_filters, ["/units/a.bpf", "/units/b.bpf"]);
    assert_eq!(Unit::parse(&u.render(), "r").expect("round trip"), u);
    let none = Unit::parse("[Service]\nExecStart=x\n[X-Pod]\nCapabilities=\n", "u").expect("parse");
    assert_eq!(none.capabilities, CapSet::EMPTY);
    assert!(none.render().contains("\nCapabilities=\n"), "{}", none.render());
    assert_eq!(Unit::parse(&none.render(), "r").expect("round trip"), none);
    let cases = [
        (
            "[Service]\nExecStart=x\n[X-Pod]\nCapabilities=CAP_FLY\n",
            "u:4: Capabilities: invalid value \"CAP_FLY\": expected capability names like CAP_CHOWN",
        ),
        ("[Service]\nExecStart=x\n[X-Pod]\nCapabilities=\nCapabilities=KILL\n", "u:5: Capabilities: given twice"),
        (
            "[Service]\nExecStart=x\n[X-Pod]\nSeccompFilter=a.bpf\n",
            "u:4: SeccompFilter: invalid value \"a.bpf\": expected an absolute path",
        ),
        ("[Service]\nExecStart=x\n[X-Pod]\nSeccompFilter=/a\nSeccompFilter=/b\n", "u:5: SeccompFilter: given twice"),
    ];
    for (text, want) in cases {
        assert_eq!(Unit::parse(text, "u").map(|_| ()).expect_err(text).to_string(), want);
    }
}

/// Found by fuzzing (fuzz/fuzz_targets/unit.rs): a lone `\r` inside the
/// description parsed as itself but rendered as a space.
#[test]
fn description_carriage_return_round_trips() {
    let u = Unit::parse("[Service]\nExecStart=x\n[Unit]\nDescription=a\r\rb\r\n", "u").expect("parse");
    assert_eq!(u.description.as_deref(), Some("a  b"));
    assert_eq!(Unit::parse(&u.render(), "r").expect("round trip"), u);
}

#[test]
fn kill_signal_by_name_or_number() {
    assert_eq!(signal_number("SIGQUIT"), Some(3));
    assert_eq!(signal_number("quit"), Some(3));
    assert_eq!(signal_number("9"), Some(9));
    assert_eq!(signal_number("SIGRTMIN+3"), Some(37));
    assert_eq!(signal_number("SIGWINCH"), Some(28));
    for bad in ["", "0", "65", "SIGNOPE", "-1"] {
        assert_eq!(signal_number(bad), None, "{bad}");
    }
    let text = "[Service]\nExecStart=/bin/x\nKillSignal=SIGQUIT\n";
    let unit = Unit::parse(text, "x.unit").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unit.kill_signal, 3);
    let again = Unit::parse(&unit.render(), "x.unit").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, unit);
    assert!(Unit::parse("[Service]\nExecStart=/bin/x\nKillSignal=NOPE\n", "x.unit").is_err());
    // The default is not written.
    let plain = Unit::parse("[Service]\nExecStart=/bin/x\n", "x.unit").unwrap_or_else(|e| panic!("{e}"));
    assert!(!plain.render().contains("KillSignal"));
}

#[test]
fn no_new_privileges_and_groups_policy() {
    let u = Unit::parse("[Service]\nExecStart=/x\n", "u").expect("unit");
    assert!(u.no_new_privileges && u.image_groups, "the defaults");
    assert!(!u.render().contains("NoNewPrivileges") && !u.render().contains("SupplementaryGroupsPolicy"));
    let text =
        "[Service]\nExecStart=/x\nNoNewPrivileges=no\n[X-Pod]\nSupplementaryGroupsPolicy=strict\nPIDNamespace=own\n";
    let u = Unit::parse(text, "u").expect("unit");
    assert!(!u.no_new_privileges && !u.image_groups && u.own_pid);
    assert!(Unit::parse("[Service]\nExecStart=/x\n[X-Pod]\nPIDNamespace=host\n", "u").is_err());
    assert_eq!(Unit::parse(&u.render(), "r").expect("round trip"), u);
    let e = Unit::parse("[Service]\nExecStart=/x\nNoNewPrivileges=maybe\n", "u").expect_err("bad");
    assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("NoNewPrivileges")));
    assert!(Unit::parse("[X-Pod]\nSupplementaryGroupsPolicy=loose\n[Service]\nExecStart=/x\n", "u").is_err());
}

#[test]
fn log_and_stdin_keys() {
    let text =
        "[Service]\nExecStart=/bin/x\n[X-Pod]\nLogPath=/volumes/logs/c/0.log\nLogFormat=cri\nStdin=fifo\nTTY=yes\n";
    let unit = Unit::parse(text, "x.unit").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unit.log_path.as_deref(), Some("/volumes/logs/c/0.log"));
    assert_eq!(unit.log_format, crate::stdio::LogFormat::Cri);
    assert!(unit.stdin_fifo);
    assert!(unit.tty);
    assert_eq!(Unit::parse(&unit.render(), "x.unit").unwrap_or_else(|e| panic!("{e}")), unit);
    for bad in ["LogPath=rel/x", "LogPath=/a/../b", "LogFormat=json", "Stdin=pipe", "TTY=1", "LogPath=/a\nLogPath=/b"] {
        let text = format!("[Service]\nExecStart=/bin/x\n[X-Pod]\n{bad}\n");
        assert!(Unit::parse(&text, "x.unit").is_err(), "{bad}");
    }
    // The defaults are not written: units of apps without them stay as they were.
    let plain = Unit::parse("[Service]\nExecStart=/bin/x\n", "x.unit").unwrap_or_else(|e| panic!("{e}"));
    let rendered = plain.render();
    assert!(!rendered.contains("Log") && !rendered.contains("Stdin") && !rendered.contains("TTY"), "{rendered}");
}
