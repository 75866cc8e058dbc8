//! A TCP proxy that can be switched off: while down nothing listens on its port (connections
//! are refused) and the connections it was carrying are cut, as when the server behind it is
//! stopped. Chaos runs put it in front of the S3 server, so "S3 stopped for a while" needs no
//! cooperation from the server itself (moto keeps its objects only in memory).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    /// The accept loop and every forwarded connection, aborted together when going down.
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    runtime: tokio::runtime::Handle,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let proxy = TcpProxy {
            addr: listener.local_addr()?,
            upstream,
            tasks: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
        };
        proxy.serve(listener);
        Ok(proxy)
    }

    fn serve(&self, listener: TcpListener) {
        let (tasks, upstream) = (self.tasks.clone(), self.upstream);
        let accept = self.runtime.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let connection = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut tasks = tasks.lock().unwrap();
                tasks.retain(|t| !t.is_finished());
                tasks.push(connection);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Down: stop listening and cut every open connection. Up: listen on the same port again.
    /// Callable from any thread.
    pub fn set_down(&self, down: bool) -> anyhow::Result<()> {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        if !down {
            let addr = self.addr;
            // The aborted accept loop drops its listener on the runtime's next turn; until
            // then the port is still taken.
            let mut attempts = 0;
            let std_listener = loop {
                match std::net::TcpListener::bind(addr) {
                    Ok(listener) => break listener,
                    Err(e) if attempts >= 50 => return Err(e.into()),
                    Err(_) => {
                        attempts += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            };
            std_listener.set_nonblocking(true)?;
            let _guard = self.runtime.enter();
            self.serve(TcpListener::from_std(std_listener)?);
        }
        Ok(())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}
