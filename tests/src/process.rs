//! Service binaries a test starts: where they are, starting and signalling them, waiting
//! until they are ready, and where their logs go.

use std::time::Duration;

use crate::http::http_get;
use crate::stack::free_port;
use crate::wait::eventually;

/// Path of a workspace binary (built by `scripts/build`, which `scripts/test` runs before
/// the tests, in the same `local` profile), next to the running executable: a test runs
/// from `target/<profile>/deps/`, a binary (load-tests' `chaos`) from `target/<profile>/`.
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut profile_dir = exe.parent().expect("exe dir");
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().expect("target dir");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (scripts/build; run the tests with scripts/test, \
         or cargo test --profile local)",
        path.display()
    );
    path
}

/// Send SIGTERM to a child process.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

/// SIGKILL a child (no chance to commit or abort anything).
pub fn sigkill(child: &mut tokio::process::Child) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

/// Panic unless `child` is still running (`what` names it).
pub fn still_running(child: &mut tokio::process::Child, what: &str) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "{what} exited: {:?}",
        child.try_wait()
    );
}

/// Start a service binary with `envs` (plus its HTTP address and `AIFAB_LOG=warn`); its
/// logs go to the test's stderr. Returns the child and its address.
pub fn spawn_service(service: &str, envs: &[(&str, String)]) -> (tokio::process::Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = tokio::process::Command::new(bin_path(&format!("aifab-{service}")));
    cmd.env("AIFAB_HTTP_ADDR", &addr)
        .env("AIFAB_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    (
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting aifab-{service}: {e}")),
        addr,
    )
}

/// Wait until a service at `addr` answers /readyz 200.
pub async fn wait_ready(addr: &str, what: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("{what} /readyz 200"),
        || {
            let addr = addr.to_string();
            async move { matches!(http_get(&addr, "/readyz").await, Ok((200, _))).then_some(()) }
        },
    )
    .await;
}

/// Where a service started by a test writes its log (stdout): nowhere, unless
/// `AIFAB_TEST_LOG_DIR` names a directory, then `<dir>/<name>.log` (appended, so a
/// restarted replica's log follows its predecessor's). `AIFAB_TEST_SERVICE_LOG` sets the
/// level filter (default `warn`).
pub fn service_log(name: &str) -> std::process::Stdio {
    let Some(dir) = std::env::var_os("AIFAB_TEST_LOG_DIR") else {
        return std::process::Stdio::null();
    };
    let path = std::path::Path::new(&dir).join(format!("{name}.log"));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(f) => f.into(),
        Err(e) => panic!("AIFAB_TEST_LOG_DIR: cannot open {}: {e}", path.display()),
    }
}

/// A service log kept in a temporary file and printed (its last lines) only if the test
/// fails: for scenarios whose failures are rare and need the service's view to explain.
pub struct LogOnFailure {
    name: String,
    file: tempfile::NamedTempFile,
}

impl LogOnFailure {
    pub fn new(name: &str) -> Self {
        LogOnFailure {
            name: name.to_string(),
            file: tempfile::NamedTempFile::new().expect("a temporary log file"),
        }
    }

    /// Where the service writes (append; the file outlives the process).
    pub fn stdio(&self) -> std::process::Stdio {
        self.file
            .reopen()
            .expect("reopening the temporary log")
            .into()
    }
}

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let text = std::fs::read_to_string(self.file.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(300)..];
        eprintln!(
            "--- last {} lines of {}'s log ---\n{}\n--- end of {}'s log ---",
            tail.len(),
            self.name,
            tail.join("\n"),
            self.name
        );
    }
}

/// Run `cmd` to completion within `limit`; panics with its output unless it succeeded.
/// Returns its standard output.
pub async fn run_ok(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> String {
    let out = tokio::time::timeout(limit, cmd.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `aifab down` for the supervisor of `AIFAB_HOME=home` when dropped, whatever the
/// test did: it stops the supervisor a test started and its services.
pub struct SupervisorGuard {
    pub home: std::path::PathBuf,
}

impl Drop for SupervisorGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(bin_path("aifab"))
            .arg("down")
            .env("AIFAB_HOME", &self.home)
            .stdout(std::process::Stdio::null())
            .status();
    }
}
