//! A child process that cannot outlive its owner: killed and reaped when dropped, and killed by the kernel if
//! the test process dies first (no stray etcd or kube-apiserver after a crashed or interrupted test run).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

pub struct Supervised {
    name: String,
    pid: u32,
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<Option<ExitStatus>>>,
}

impl Supervised {
    /// Starts `cmd` with its stdout and stderr in `log`. The child is started by a keeper thread that lives as
    /// long as it does: PR_SET_PDEATHSIG fires when the thread that forked the child ends, so the child gets
    /// SIGKILL if the test process exits in any way, and never because a runtime retired a worker thread.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Supervised> {
        let out = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (started_tx, started_rx) = mpsc::channel::<std::io::Result<u32>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let keeper = std::thread::Builder::new()
            .name(format!("keeper-{name}"))
            .spawn(move || {
                let mut child: Child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return None;
                    }
                };
                let _ = started_tx.send(Ok(child.id()));
                // Wait for the owner to stop us (or to go away), then kill and reap.
                let _ = stop_rx.recv();
                let _ = child.kill();
                child.wait().ok()
            })?;
        let pid = started_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("{name}: keeper thread ended before starting"))??;
        Ok(Supervised {
            name: name.to_string(),
            pid,
            stop: Some(stop_tx),
            keeper: Some(keeper),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited on its own (it is reaped only on stop, so it is a zombie until then).
    pub fn exited(&self) -> bool {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG|WNOWAIT only inspects; the keeper still reaps the child.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if r == 0 {
                status = info.si_pid();
            }
            r
        };
        r == 0 && status != 0
    }

    /// Kills the process and waits until it is reaped.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        drop(self.stop.take());
        self.keeper.take().and_then(|k| k.join().ok().flatten())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}
