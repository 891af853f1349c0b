//! The processes of a chaos soak (`loadgen soak --nodes N`): a redis-server of its own on a free
//! port (so it can be restarted empty or paused) and N `multi_node` example processes on it, each
//! on a free port. Every process is killed when the [`Cluster`] is dropped (kill-on-drop), also
//! when the soak fails or panics.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::{Spawned, rss};

/// A free loopback port (bound, then released).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Resident memory of one process slot (a node or Redis), across its restarts.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Rss {
    /// Which process.
    pub name: String,
    /// Before the clients (bytes).
    pub before: Option<u64>,
    /// Highest sampled.
    pub peak: Option<u64>,
    /// After everyone left (of the instance running then).
    pub after: Option<u64>,
}

/// Redis and the nodes.
pub struct Cluster {
    node_cmd: String,
    env: String,
    log: Option<String>,
    redis_port: u16,
    redis: Option<Spawned>,
    /// The nodes' ports (fixed across restarts: a restarted node comes back at the same address).
    pub ports: Vec<u16>,
    nodes: Vec<Option<Spawned>>,
    /// Memory per process: the nodes, then Redis.
    pub rss: Vec<Rss>,
}

impl Cluster {
    /// Starts Redis and `n` nodes (`node_cmd`, with `env` — `K=V ...` — before the cluster's own
    /// variables).
    pub async fn start(
        n: usize,
        node_cmd: &str,
        env: &str,
        log: Option<&str>,
    ) -> Result<Cluster, String> {
        let mut c = Cluster {
            node_cmd: node_cmd.to_string(),
            env: env.to_string(),
            log: log.map(str::to_string),
            redis_port: free_port()?,
            redis: None,
            ports: (0..n).map(|_| free_port()).collect::<Result<_, _>>()?,
            nodes: (0..n).map(|_| None).collect(),
            rss: (0..n)
                .map(|i| Rss {
                    name: format!("node {i}"),
                    ..Rss::default()
                })
                .chain([Rss {
                    name: "redis-server".into(),
                    ..Rss::default()
                }])
                .collect(),
        };
        c.start_redis().await?;
        for i in 0..n {
            c.start_node(i).await?;
        }
        Ok(c)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    async fn start_redis(&mut self) -> Result<(), String> {
        let cmd = format!(
            "redis-server --port {} --bind 127.0.0.1 --save '' --appendonly no --loglevel warning",
            self.redis_port
        );
        self.redis =
            Some(Spawned::start(&cmd, Self::addr(self.redis_port), self.log.as_deref()).await?);
        Ok(())
    }

    /// Starts node `i` (again).
    pub async fn start_node(&mut self, i: usize) -> Result<(), String> {
        let cmd = format!(
            "env {} PORT={} REDIS_URL=redis://127.0.0.1:{} SOCKETIO=1 {}",
            self.env, self.ports[i], self.redis_port, self.node_cmd
        );
        self.nodes[i] =
            Some(Spawned::start(&cmd, Self::addr(self.ports[i]), self.log.as_deref()).await?);
        Ok(())
    }

    /// SIGKILLs node `i` (no goodbye to anyone: its sessions are swept after its lease).
    pub async fn kill_node(&mut self, i: usize) {
        if let Some(s) = self.nodes[i].take() {
            s.stop().await;
        }
    }

    /// Kills Redis and starts it again, empty, on the same port.
    pub async fn restart_redis(&mut self) -> Result<(), String> {
        if let Some(s) = self.redis.take() {
            s.stop().await;
        }
        self.start_redis().await
    }

    /// `CLIENT PAUSE ms ALL`: every client's commands wait (the nodes' calls time out).
    pub async fn pause_redis(&self, ms: u64) -> Result<(), String> {
        let mut tcp = tokio::net::TcpStream::connect(Self::addr(self.redis_port))
            .await
            .map_err(|e| e.to_string())?;
        let ms = ms.to_string();
        let cmd = format!(
            "*4\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n${}\r\n{ms}\r\n$3\r\nALL\r\n",
            ms.len()
        );
        tcp.write_all(cmd.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .map_err(|_| "CLIENT PAUSE: no answer".to_string())?
            .map_err(|e| e.to_string())?;
        let reply = String::from_utf8_lossy(&buf[..n]);
        if reply.starts_with("+OK") {
            Ok(())
        } else {
            Err(format!("CLIENT PAUSE: {reply}"))
        }
    }

    fn pids(&self) -> Vec<Option<u32>> {
        self.nodes
            .iter()
            .map(|n| n.as_ref().map(|s| s.pid))
            .chain([self.redis.as_ref().map(|s| s.pid)])
            .collect()
    }

    /// Samples every process's RSS: `Before`, a peak sample, or `After`.
    pub fn sample(&mut self, when: Sample) {
        let pids = self.pids();
        for (slot, pid) in self.rss.iter_mut().zip(pids) {
            let b = pid.and_then(rss);
            match when {
                Sample::Before => slot.before = b,
                Sample::Peak => {}
                Sample::After => slot.after = b,
            }
            slot.peak = slot.peak.max(b);
        }
    }

    /// Stops everything.
    pub async fn stop(mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(s) = n.take() {
                s.stop().await;
            }
        }
        if let Some(s) = self.redis.take() {
            s.stop().await;
        }
    }
}

/// When [`Cluster::sample`] samples.
#[derive(Debug, Clone, Copy)]
pub enum Sample {
    /// Before the clients.
    Before,
    /// During the run.
    Peak,
    /// After everyone left.
    After,
}
