//! A private `redis-server` for a test or benchmark: spawned on a free port with persistence
//! off, killed by PID on drop (and restartable on the same port, empty, to test recovery).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server process owned by this test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// `--tls-cert-file`, `--tls-key-file`, `--tls-ca-cert-file`: serve TLS only, on `port`.
    tls: Option<[String; 3]>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts a server on a free port and waits (up to 10 s) until it answers.
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            let mut s = RedisServer {
                child: None,
                port,
                tls: None,
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server (is it installed?)");
    }

    /// Starts a server that speaks TLS only (no plain port), with this certificate, key and CA
    /// (PEM files; clients are not asked for certificates).
    pub fn start_tls(cert: &str, key: &str, ca: &str) -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            let mut s = RedisServer {
                child: None,
                port,
                tls: Some([cert.into(), key.into(), ca.into()]),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("could not start redis-server with TLS (built without it?)");
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let ports: Vec<&str> = match &self.tls {
            None => vec!["--port", &port],
            Some([cert, key, ca]) => vec![
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-auth-clients",
                "no",
            ],
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed? apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
