//! A TCP proxy in front of the apiserver that a test can cut, for network
//! faults between one client and the control plane.

use std::time::Duration;

use super::cluster::wait_for;

/// A TCP proxy between the agents and the apiserver that can go away: `down`
/// drops every connection and the listener (clients see resets, then
/// connection refused), `up` listens on the same port again.
pub struct ApiProxy {
    pub addr: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ApiProxy {
    /// Must run on the test's runtime (inside `block_in_place` is fine).
    pub fn start(upstream: std::net::SocketAddr) -> ApiProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let proxy = ApiProxy {
            addr: listener.local_addr().expect("proxy address"),
            upstream,
            task: std::sync::Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let upstream = self.upstream;
        let task = tokio::spawn(async move {
            // Dropping this future (abort) drops the set and every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        connections.spawn(async move {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    pub fn down(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    pub fn up(&self) {
        // std's listener sets SO_REUSEADDR, so the port is free again at once.
        let listener = wait_for("the proxy port again", Duration::from_secs(10), || {
            std::net::TcpListener::bind(self.addr).ok()
        });
        self.serve(listener);
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.down();
    }
}
