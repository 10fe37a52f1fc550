//! A nats-server of its own, for the tests and the benchmark: JetStream on, a free loopback
//! port that stays the same across restarts, a temporary store, and `max_payload` raised to
//! 16 MB (it has no command-line flag) so that hostile 10 MB messages can be sent at all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The `nats-server` binary: `KMSGUARD_NATS_SERVER`, else the first on the `PATH`, else
/// Debian's `/usr/sbin/nats-server`.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KMSGUARD_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A running (or stopped, between [`Server::down`] and [`Server::up`]) nats-server. Dropping it
/// kills the server and removes its directory.
#[derive(Debug)]
pub struct Server {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// Starts `binary` with a fresh store under the temporary directory, named after `name`.
    ///
    /// # Panics
    ///
    /// When the server cannot be started or does not listen within 20 seconds: this is for
    /// tests and benchmarks, which cannot go on without it.
    pub fn start(binary: PathBuf, name: &str) -> Server {
        let dir = std::env::temp_dir().join(format!("kmsguard-nats-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let config = format!(
            "host: 127.0.0.1\nport: {port}\nmax_payload: 16MB\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            dir.join("store").display()
        );
        std::fs::write(dir.join("server.conf"), config).expect("write the server's config");
        let mut server = Server { binary, dir, port, child: None };
        server.up();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's directory (its config, log and store); callers may put their logs there.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server again (on the same port, with the same store) and waits until it
    /// listens.
    ///
    /// # Panics
    ///
    /// As [`Server::start`].
    pub fn up(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("the server's log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.join("server.conf"))
            .stdout(log.try_clone().expect("the server's log"))
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server as an operator restarting it would: SIGTERM (it syncs its store), and
    /// SIGKILL if it has not exited 20 seconds later.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(child.id());
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends SIGTERM to process `pid` (with kill(1): no libc binding for one signal).
pub fn terminate(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}
