//! The pod commands of the CLI: run, list, status, logs, stop, rm, gc, app.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use stage0::control;
use stage0::crashpoint::crashpoint;
use stage0::exit::Exit;
use stage0::fetch::Fetcher;
use stage0::lifecycle::{self, app_statuses};
use stage0::names::SameName;
use stage0::paths::Dirs;
use stage0::pods::{PodState, Pods};
use stage0::prepare::{self, read_resolved, HostConfig, Overrides};
use stage0::run;
use stage0::sources::Sources;
use stage0::store::Store;
use stage0::trust::TrustStore;
use stage0::volumes::HostVolumePolicy;

use crate::{fail, print_table, AccelArg, AppCmd, Failed, Format, RunArgs, Stage1Arg, UsernsArg};

fn network_override(s: &str) -> spec::stage1::Network {
    match s {
        "none" => spec::stage1::Network::None,
        "host" => spec::stage1::Network::Host,
        name => spec::stage1::Network::Cni { name: name.to_owned() },
    }
}

pub(crate) fn run(dirs: &Dirs, args: RunArgs, debug: bool) -> Result<(), Failed> {
    // Passed on to stage1 (run.rs), checked here so a typo creates nothing.
    if let Some(v) = std::env::var_os(run::CGROUP_MANAGER_ENV) {
        if !matches!(v.to_str(), Some("" | "systemd" | "cgroupfs")) {
            return Err(fail(
                Exit::Usage,
                format!("{}={v:?}: expected \"systemd\" or \"cgroupfs\"", run::CGROUP_MANAGER_ENV),
            ));
        }
    }
    let store = Store::open(dirs)?;
    let trust = TrustStore::new(dirs.trust());
    let sources = Sources::new(dirs.sources());
    let pods = Pods::new(dirs);
    let host = HostConfig {
        stage2: run::stage2(),
        cni_conf_dir: dirs.config.join("net.d"),
        cni_plugin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
        netns_dir: "/run/pod/netns".into(),
        debug,
        vm: stage0::guest::vm_host(&dirs.config),
        subids: stage0::userns::SubIds::default(),
        volumes: HostVolumePolicy::load(dirs)?,
        metadata: (!args.no_metadata).then(|| dirs.data.clone()),
    };
    let overrides = Overrides {
        isolation: args.stage1.map(|s| match s {
            Stage1Arg::Ns => spec::stage1::Isolation::Namespace,
            Stage1Arg::Vm => spec::stage1::Isolation::Vm,
        }),
        network: args.net.as_deref().map(network_override),
        accel: args.accel.map(|a| match a {
            AccelArg::Auto => spec::stage1::Accel::Auto,
            AccelArg::Kvm => spec::stage1::Accel::Kvm,
            AccelArg::Tcg => spec::stage1::Accel::Tcg,
        }),
        userns: args.userns.map(|u| match u {
            UsernsArg::Host => spec::pod::UserNs::Host,
            UsernsArg::Auto => spec::pod::UserNs::Auto,
        }),
        sandbox: args.sandbox,
        interactive: (args.interactive || args.tty).then(|| prepare::Interactive {
            app: args.app.clone(),
            stdin: args.interactive,
            tty: args.tty,
        }),
        name: args.name.clone(),
        same_name: if args.replace { SameName::Replace } else { SameName::Refuse },
    };
    let detach_keys = stage0::terminal::parse_detach_keys(&args.detach_keys).map_err(|e| fail(Exit::Usage, e))?;
    let prepared = {
        let mut fetcher = Fetcher::new(&store, &trust, &sources, args.fetch.options())?;
        prepare::prepare(&pods, &mut fetcher, &args.file, &overrides, &host)?
    };
    let stage1 = run::stage1_for(prepared.resolved.isolation)?;
    let mut pod = prepared.pod;
    pods.transition(&mut pod, PodState::Running)?;
    crashpoint("run.running");
    let uuid = pod.uuid.clone();
    let dir = pod.dir.clone();
    crashpoint("run.stage1");
    if args.detach {
        run::start_detached(&stage1, &dir, &uuid, pod.into_fd())?;
        println!("{uuid}");
        Ok(())
    } else if args.interactive || args.tty {
        // The pod runs in the background; this process is attached to
        // its interactive app until it ends or the user detaches. Its
        // signals are read in one place (stage1's reaper thread must not
        // take them).
        stage0::terminal::block_signals().map_err(|e| fail(Exit::Failure, format!("blocking signals: {e}")))?;
        run::start_detached(&stage1, &dir, &uuid, pod.into_fd())?;
        let resolved = prepared.resolved;
        let app = match args.app {
            Some(a) => a.to_string(),
            None => resolved.apps.first().map(|a| a.name.to_string()).unwrap_or_default(),
        };
        let pod = lifecycle::find(&pods, &uuid)?;
        if let Ok(name) = spec::AcName::new(&app) {
            // A VM boots first (minutes under TCG).
            let vm = resolved.isolation == spec::stage1::Isolation::Vm;
            let limit = Duration::from_secs(if vm { 600 } else { 120 });
            // The stage1 runs in the background: its pod-init may not
            // serve its control socket yet (a loaded host).
            let sock = pod.dir.join(spec::control::SOCKET);
            let start = std::time::Instant::now();
            while !sock.exists() && stage0::pods::is_locked(&pod.dir) && start.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(50));
            }
            control::wait_started(&pod, &name, limit)?;
        }
        let opts = stage0::attach::AttachOptions {
            stdin: args.interactive.then_some(true),
            detach_keys,
            from_start: true,
            close_at_eof: true,
        };
        let outcome = stage0::attach::attach(&pod, &resolved, &app, &opts)?;
        attached_exit(outcome, Some((&pod, &resolved)))
    } else {
        eprintln!("pod {uuid} ({})", prepared.resolved.name);
        Err(run::exec_foreground(&stage1, &dir, pod.into_fd()).into())
    }
}

pub(crate) fn list(dirs: &Dirs, format: Format) -> Result<(), Failed> {
    let pods = Pods::new(dirs);
    let mut rows = Vec::new();
    for p in pods.list()? {
        let resolved = read_resolved(&p.dir);
        let (name, isolation, apps, ports, created) = match &resolved {
            Some(r) => (
                r.name.to_string(),
                match r.isolation {
                    spec::stage1::Isolation::Namespace => "namespace".to_owned(),
                    // The accelerator stage1-vm picked, once it has.
                    spec::stage1::Isolation::Vm => match std::fs::read_to_string(p.dir.join("vm").join("accel")) {
                        Ok(accel) => format!("vm/{}", accel.trim()),
                        Err(_) => "vm".to_owned(),
                    },
                },
                r.apps.iter().map(|a| a.name.to_string()).collect::<Vec<_>>(),
                r.apps
                    .iter()
                    .flat_map(|a| a.ports.iter())
                    .map(|pt| format!("{}:{}->{}/{}", pt.host_ip, pt.host_port, pt.container_port, pt.protocol))
                    .collect::<Vec<_>>(),
                r.created_at.clone(),
            ),
            None => ("-".into(), "-".to_owned(), Vec::new(), Vec::new(), String::new()),
        };
        let ips: Vec<String> = std::fs::read_to_string(p.dir.join("etc").join("hosts"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("127.") && !l.starts_with("::1"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        let userns = stage0::userns::recorded(&p.dir);
        rows.push((p, name, isolation, apps, ips, ports, created, userns));
    }
    match format {
        Format::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|(p, name, iso, apps, ips, ports, created, userns)| {
                    serde_json::json!({"uuid": p.uuid, "name": name, "state": p.state.as_str(), "isolation": iso,
                        "apps": apps, "ips": ips, "ports": ports, "created": created, "userns": userns})
                })
                .collect();
            println!("{}", serde_json::Value::Array(v));
        }
        Format::Table => {
            let mut out = String::from("UUID\tNAME\tSTATE\tISOLATION\tAPPS\tIPS\tPORTS\tCREATED\n");
            for (p, name, iso, apps, ips, ports, created, _) in &rows {
                out.push_str(&format!(
                    "{}\t{name}\t{}\t{iso}\t{}\t{}\t{}\t{created}\n",
                    &p.uuid[..8],
                    p.state,
                    apps.join(","),
                    if ips.is_empty() { "-".into() } else { ips.join(",") },
                    if ports.is_empty() { "-".into() } else { ports.join(",") },
                ));
            }
            print_table(&out);
        }
    }
    Ok(())
}

pub(crate) fn status(dirs: &Dirs, query: &str, format: Format) -> Result<(), Failed> {
    let pods = Pods::new(dirs);
    let pod = lifecycle::find(&pods, query)?;
    let resolved =
        read_resolved(&pod.dir).ok_or_else(|| fail(Exit::Failure, format!("pod {} has no pod.json", pod.uuid)))?;
    let mut apps = app_statuses(&pod.dir, &resolved);
    if pod.state == PodState::Exited {
        lifecycle::mark_lost(&mut apps);
    }
    let exit = spec::stage1::read_exit(&pod.dir);
    let userns = stage0::userns::recorded(&pod.dir);
    match format {
        Format::Json => {
            let v = serde_json::json!({"uuid": pod.uuid, "name": resolved.name.as_str(), "state": pod.state.as_str(),
                "exitCode": exit, "userns": userns, "apps": apps});
            println!("{v}");
        }
        Format::Table => {
            println!(
                "pod {} ({}): {}{}{}",
                pod.uuid,
                resolved.name,
                pod.state,
                exit.map(|c| format!(", exit code {c}")).unwrap_or_default(),
                userns
                    .map(|m| format!(", userns uid 0-{} -> {}, gid -> {}", m.size - 1, m.uid, m.gid))
                    .unwrap_or_default()
            );
            let mut out = String::from("APP\tSTATE\tPID\tEXIT\tRESTARTS\tSTARTED\tMESSAGE\n");
            for a in &apps {
                let exit = match (a.exit_code, a.signal) {
                    (_, Some(sig)) => format!("signal {sig}"),
                    (Some(c), None) => c.to_string(),
                    _ => "-".into(),
                };
                out.push_str(&format!(
                    "{}\t{}\t{}\t{exit}\t{}\t{}\t{}\n",
                    a.app,
                    a.state,
                    a.pid.map_or("-".into(), |p| p.to_string()),
                    a.restarts.unwrap_or(0),
                    a.started_at.as_deref().unwrap_or("-"),
                    a.message.as_deref().unwrap_or("")
                ));
            }
            print_table(&out);
        }
    }
    Ok(())
}

pub(crate) fn logs(dirs: &Dirs, query: &str, app: Option<&str>, follow: bool) -> Result<(), Failed> {
    let pods = Pods::new(dirs);
    let pod = lifecycle::find(&pods, query)?;
    let resolved =
        read_resolved(&pod.dir).ok_or_else(|| fail(Exit::Failure, format!("pod {} has no pod.json", pod.uuid)))?;
    let apps: Vec<String> = match app {
        Some(a) if resolved.apps.iter().any(|x| x.name.as_str() == a) => vec![a.to_owned()],
        Some(a) => return Err(fail(Exit::NotFound, format!("pod {} has no app {a}", pod.uuid))),
        None => resolved.apps.iter().map(|a| a.name.to_string()).collect(),
    };
    let prefix = apps.len() > 1;
    let mut offsets = vec![0u64; apps.len()];
    let mut partial = vec![Vec::new(); apps.len()];
    let mut out = std::io::stdout().lock();
    loop {
        for (i, a) in apps.iter().enumerate() {
            let Ok(mut f) = File::open(lifecycle::app_log_file(&pod.dir, &resolved, a)) else { continue };
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(offsets[i])).is_ok() && f.read_to_end(&mut buf).is_ok() {
                offsets[i] += buf.len() as u64;
                partial[i].extend_from_slice(&buf);
                while let Some(nl) = partial[i].iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial[i].drain(..=nl).collect();
                    if prefix {
                        let _ = write!(out, "[{a}] ");
                    }
                    if out.write_all(&line).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        let _ = out.flush();
        if !follow || !stage0::pods::is_locked(&pod.dir) {
            for (i, a) in apps.iter().enumerate() {
                if !partial[i].is_empty() {
                    let _ = writeln!(
                        out,
                        "{}{}",
                        if prefix { format!("[{a}] ") } else { String::new() },
                        String::from_utf8_lossy(&partial[i])
                    );
                }
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn stop(dirs: &Dirs, query: &str, timeout: Option<u64>) -> Result<(), Failed> {
    let pods = Pods::new(dirs);
    let pod = lifecycle::find(&pods, query)?;
    lifecycle::stop(&pod, timeout.map(Duration::from_secs))?;
    println!("{}", pod.uuid);
    Ok(())
}

pub(crate) fn rm(dirs: &Dirs, queries: &[String]) -> Result<(), Failed> {
    let pods = Pods::new(dirs);
    for q in queries {
        let pod = lifecycle::find(&pods, q)?;
        lifecycle::remove(&pods, &pod)?;
        println!("{}", pod.uuid);
    }
    Ok(())
}

/// Exited and abandoned pods, then the store's leftovers of killed imports
/// (as `pod image gc`, but without waiting for imports in progress).
pub(crate) fn gc(dirs: &Dirs) -> Result<(), Failed> {
    let pods = Pods::new(dirs);
    for uuid in lifecycle::gc(&pods)? {
        eprintln!("removed pod {uuid}");
    }
    let store = Store::open(dirs)?;
    match store.try_lock_exclusive() {
        Ok(_lock) => {
            for name in store.gc_tmp()? {
                eprintln!("removed leftover {name}");
            }
        }
        // An import is running: its leftovers, if any, wait for the next gc.
        Err(stage0::store::StoreError::Locked(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The running pod `query` names, and its `pod.json`.
fn running_pod(dirs: &Dirs, query: &str) -> Result<(stage0::pods::PodRef, spec::stage1::ResolvedPod), Failed> {
    let pods = Pods::new(dirs);
    let pod = lifecycle::find(&pods, query)?;
    if pod.state != PodState::Running {
        return Err(fail(Exit::Conflict, format!("pod {} is {}, not running", pod.uuid, pod.state)));
    }
    let resolved =
        read_resolved(&pod.dir).ok_or_else(|| fail(Exit::Failure, format!("pod {} has no pod.json", pod.uuid)))?;
    Ok((pod, resolved))
}

pub(crate) fn enter(dirs: &Dirs, query: &str, app: Option<&str>, command: &[String], tty: bool) -> Result<(), Failed> {
    let (pod, resolved) = running_pod(dirs, query)?;
    let app = match app {
        Some(a) => a.to_owned(),
        None => resolved.apps.first().map(|a| a.name.to_string()).unwrap_or_default(),
    };
    let code = if resolved.isolation == spec::stage1::Isolation::Vm {
        if !resolved.apps.iter().any(|a| a.name.as_str() == app) {
            return Err(stage0::enter::EnterError::NoApp(app).into());
        }
        stage0::enter::enter_vm(&pod.dir, &app, command, tty)?
    } else {
        let pid = stage0::enter::init_pid(&pod.dir)
            .ok_or_else(|| fail(Exit::Conflict, format!("pod {} has no PID 1 yet", pod.uuid)))?;
        if tty {
            stage0::enter::enter_tty(pid, &app, command)?
        } else {
            stage0::enter::enter(pid, &app, command)?
        }
    };
    if code == 0 {
        Ok(())
    } else {
        // The command's own status, as `pod run` passes the pod's.
        Err(Failed { exit: Exit::Ok, err: anyhow::anyhow!("command exited with status {code}"), code: Some(code) })
    }
}

/// `pod attach`: to a running app's terminal or output and stdin.
pub(crate) fn attach(
    dirs: &Dirs,
    query: &str,
    app: Option<&str>,
    stdin: Option<bool>,
    detach_keys: &str,
) -> Result<(), Failed> {
    let detach_keys = stage0::terminal::parse_detach_keys(detach_keys).map_err(|e| fail(Exit::Usage, e))?;
    let pods = Pods::new(dirs);
    let pod = lifecycle::find(&pods, query)?;
    let resolved =
        read_resolved(&pod.dir).ok_or_else(|| fail(Exit::Failure, format!("pod {} has no pod.json", pod.uuid)))?;
    let app = match app {
        Some(a) => a.to_owned(),
        None => resolved.apps.first().map(|a| a.name.to_string()).unwrap_or_default(),
    };
    let opts = stage0::attach::AttachOptions { stdin, detach_keys, from_start: false, close_at_eof: false };
    let outcome = stage0::attach::attach(&pod, &resolved, &app, &opts)?;
    attached_exit(outcome, None)
}

/// `pod run -it`'s and `pod attach`'s exit: the app's status when it
/// ended (once its pod is released, when the pod ends with it), 0 when
/// detached, 128+signal when `pod` was signalled.
fn attached_exit(
    outcome: stage0::attach::Attached,
    pod: Option<(&stage0::pods::PodRef, &spec::stage1::ResolvedPod)>,
) -> Result<(), Failed> {
    use stage0::attach::Attached;
    let code = match outcome {
        Attached::Detached => 0,
        Attached::Exited(code) => {
            if let Some((pod, resolved)) = pod {
                stage0::attach::wait_pod_end(pod, resolved, Duration::from_secs(30));
            }
            code
        }
        Attached::Signalled(code) => code,
    };
    if code == 0 {
        Ok(())
    } else {
        Err(Failed { exit: Exit::Ok, err: anyhow::anyhow!("app exited with status {code}"), code: Some(code) })
    }
}

/// `pod enter --port`: stdin and stdout joined to a TCP port on the
/// pod's loopback. `app` only checks that the pod has it.
pub(crate) fn connect_port(dirs: &Dirs, query: &str, app: Option<&str>, port: u16) -> Result<(), Failed> {
    let (pod, resolved) = running_pod(dirs, query)?;
    if let Some(app) = app.filter(|a| !resolved.apps.iter().any(|x| x.name.as_str() == *a)) {
        return Err(stage0::enter::EnterError::NoApp(app.to_owned()).into());
    }
    if resolved.isolation == spec::stage1::Isolation::Vm {
        stage0::enter::connect_port_vm(&pod.dir, port)?;
    } else {
        let pid = stage0::enter::init_pid(&pod.dir)
            .ok_or_else(|| fail(Exit::Conflict, format!("pod {} has no PID 1 yet", pod.uuid)))?;
        stage0::enter::connect_port(pid, port)?;
    }
    Ok(())
}

/// `pod app`: list, stop and start the apps of a running pod.
pub(crate) fn app(dirs: &Dirs, cmd: AppCmd) -> Result<(), Failed> {
    let pods = Pods::new(dirs);
    match cmd {
        AppCmd::List { pod, format } => {
            let pod = lifecycle::find(&pods, &pod)?;
            let apps = control::list(&pod)?;
            match format {
                Format::Json => {
                    let v: Vec<_> = apps
                        .iter()
                        .map(|a| {
                            serde_json::json!({"app": a.name, "state": a.state, "pid": a.pid, "exitCode": a.exit_code,
                                "signal": a.signal, "restarts": a.restarts, "message": a.message})
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                }
                Format::Table => {
                    let mut out = String::from("APP\tSTATE\tPID\tEXIT\tRESTARTS\tMESSAGE\n");
                    for a in &apps {
                        let exit = match (a.exit_code, a.signal) {
                            (_, Some(sig)) => format!("signal {sig}"),
                            (Some(c), None) => c.to_string(),
                            _ => "-".into(),
                        };
                        let pid = a.pid.map_or("-".into(), |p| p.to_string());
                        let message = a.message.replace(['\n', '\t'], " ");
                        out.push_str(&format!("{}\t{}\t{pid}\t{exit}\t{}\t{message}\n", a.name, a.state, a.restarts));
                    }
                    print_table(&out);
                }
            }
        }
        AppCmd::Stop { pod, app, timeout } => {
            let pod = lifecycle::find(&pods, &pod)?;
            let info = match timeout {
                Some(secs) => control::stop_within(&pod, &app, std::time::Duration::from_secs(secs))?,
                None => control::stop(&pod, &app)?,
            };
            eprintln!("pod {}: app {app} {}{}", pod.uuid, info.state, describe_end(&info));
        }
        AppCmd::Add(args) => {
            let pod = lifecycle::find(&pods, &args.pod)?;
            let store = Store::open(dirs)?;
            let trust = TrustStore::new(dirs.trust());
            let sources = Sources::new(dirs.sources());
            let mut fetcher = Fetcher::new(&store, &trust, &sources, args.fetch.options())?;
            let args = *args;
            let new = stage0::addapp::NewApp {
                name: args.name.clone(),
                image: args.image,
                exec: args.exec,
                env: args.env,
                user: args.user,
                group: args.group,
                working_directory: args.working_directory,
                mounts: args.mount,
                extra: args.app_keys.unwrap_or_default(),
            };
            let policy = stage0::volumes::HostVolumePolicy::load(dirs)?;
            let info = stage0::addapp::add_with_host_volumes(&pod, &mut fetcher, &new, Some(&policy))?;
            let pid = info.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
            eprintln!("pod {}: app {} added, {}{pid}", pod.uuid, args.name, info.state);
        }
        AppCmd::Rm { pod, app } => {
            let pod = lifecycle::find(&pods, &pod)?;
            stage0::addapp::remove(&pod, &app)?;
            eprintln!("pod {}: app {app} removed", pod.uuid);
        }
        AppCmd::Start { pod, app } => {
            let pod = lifecycle::find(&pods, &pod)?;
            let info = control::start(&pod, &app)?;
            let pid = info.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
            eprintln!("pod {}: app {app} {}{pid}", pod.uuid, info.state);
        }
    }
    Ok(())
}

fn describe_end(info: &spec::control::AppInfo) -> String {
    if info.message.is_empty() {
        String::new()
    } else {
        format!(" ({})", info.message)
    }
}
