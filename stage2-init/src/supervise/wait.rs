//! One wakeup of the supervision loop: poll(2) over the signalfd, the
//! control socket, the exec reports of starting apps, the output the log
//! writers read (pipes, terminal masters) and the terminals' input, then
//! each ready one handled.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::{output, signal_group, tty, Supervisor, MAX_SLEEP};
use crate::app::Phase;
use crate::Error;

impl Supervisor {
    /// Sleeps until a signal, an exec report, output, input or `timeout`;
    /// handles them.
    pub(super) fn wait(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let timeout = timeout.map_or(MAX_SLEEP, |t| t.min(MAX_SLEEP));
        // Round up so a timer is never polled for just before it is due.
        let ms = u16::try_from(timeout.as_millis() + 1).unwrap_or(u16::MAX);
        let mut reporting = Vec::new();
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if let Some(listener) = &self.control {
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        }
        let first_report = fds.len();
        for (i, app) in self.apps.iter().enumerate() {
            if let Phase::Starting { report: Some(fd), .. } = &app.phase {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                reporting.push(i);
            }
        }
        let first_output = fds.len();
        let mut outputs = Vec::new();
        for (i, app) in self.apps.iter().enumerate() {
            for (k, fd) in app.writer.iter().flat_map(output::LogWriter::fds).enumerate() {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                outputs.push((i, k));
            }
        }
        let first_input = fds.len();
        let mut inputs = Vec::new();
        for (i, app) in self.apps.iter().enumerate() {
            if let Some((fd, flags)) = app.terminal.as_ref().and_then(tty::Terminal::poll_fd) {
                fds.push(PollFd::new(fd, flags));
                inputs.push(i);
            }
        }
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::Sys(e)),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        if ready.first() == Some(&true) {
            self.read_signals();
        }
        for (k, &i) in reporting.iter().enumerate() {
            if ready.get(k + first_report) == Some(&true) {
                self.read_report(i, Instant::now());
            }
        }
        // Backwards: a pipe that ends leaves its app's list, and the
        // indices before it stay right.
        for (n, &(i, k)) in outputs.iter().enumerate().rev() {
            if ready.get(first_output + n) == Some(&true) {
                if let Some(cri) = self.apps[i].writer.as_mut() {
                    cri.read(k);
                }
            }
        }
        for (n, &i) in inputs.iter().enumerate() {
            if ready.get(first_input + n) == Some(&true) {
                if let Some(terminal) = self.apps[i].terminal.as_mut() {
                    terminal.pump();
                }
            }
        }
        // Cheap, and robust against coalesced or missed SIGCHLDs.
        self.reap();
        // Last: a request sees (and answers with) every change above.
        if first_report == 2 && ready.get(1) == Some(&true) {
            self.serve_control();
        }
        Ok(())
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            if signo == crate::sys::sig_poweroff() {
                // systemd's power off (`machinectl poweroff`): a stop.
                self.request_stop();
                continue;
            }
            let signal = Signal::try_from(signo).ok();
            match signal {
                Some(Signal::SIGTERM | Signal::SIGINT) => self.request_stop(),
                Some(Signal::SIGHUP) => {
                    for app in &self.apps {
                        if let Some(proc) = app.phase.proc() {
                            signal_group(proc.pid, Signal::SIGHUP);
                        }
                    }
                }
                _ => {} // SIGCHLD: reaping follows every wakeup
            }
        }
    }
}
