//! Opens and closes an engine's API listener as its mode demands.
//!
//! `refuse` emulates a crashed engine: the listening socket is closed so new connections
//! are refused, and every connection accepted before is reset, so a client's keep-alive
//! pool cannot keep talking to a "dead" engine. Leaving `refuse` binds the same port again.

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, error, warn};

use crate::engine::{Engine, Mode};

/// Serves `router` for `engine` until the process exits. `first` is a listener bound at
/// start-up (absent when the port must stay closed at first); `startup_delay` keeps the
/// port closed for a while, like an engine that is still booting.
pub async fn run_engine(
    engine: Arc<Engine>,
    router: Router,
    mut first: Option<TcpListener>,
    startup_delay: Duration,
) {
    tokio::time::sleep(startup_delay).await;
    let mut modes = engine.subscribe_mode();
    loop {
        if modes.wait_for(|m| *m != Mode::Refuse).await.is_err() {
            return;
        }
        let listener = match first.take() {
            Some(listener) => listener,
            None => bind_retrying(engine.addr).await,
        };
        debug!(engine = engine.index, addr = %engine.addr, "listening");
        // Dropping `reset_all` resets every connection accepted by this listener.
        let (reset_all, reset) = watch::channel(());
        let listener = ResettableListener {
            inner: listener,
            reset,
        };
        engine.set_listening(true);
        tokio::select! {
            result = axum::serve(listener, router.clone()).into_future() => {
                // axum only returns when accepting fails for good.
                error!(engine = engine.index, ?result, "API listener stopped");
            }
            _ = modes.wait_for(|m| *m == Mode::Refuse) => {}
        }
        // Reset before reporting the port closed, so that whoever saw `listening: false`
        // can no longer reach the engine through an old connection either.
        drop(reset_all);
        engine.set_listening(false);
        debug!(engine = engine.index, "listener closed");
    }
}

/// The port was ours a moment ago, but the OS or another process may hold it briefly.
async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(err) => {
                warn!(%addr, %err, "cannot bind the API port again; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

struct ResettableListener {
    inner: TcpListener,
    reset: watch::Receiver<()>,
}

impl Listener for ResettableListener {
    type Io = ResettableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        let mut reset = self.reset.clone();
        // `changed` fails once the sender is dropped; nothing is ever sent.
        let reset = Box::pin(async move { while reset.changed().await.is_ok() {} });
        (
            ResettableStream {
                stream,
                reset: Some(reset),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that fails every read and write once its listener went down. hyper
/// polls reads even while a handler is pending, so hung requests are cut off too.
struct ResettableStream {
    stream: TcpStream,
    /// `None` once the reset fired (a finished future must not be polled again).
    reset: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl ResettableStream {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(reset) = &mut self.reset {
            if reset.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            self.reset = None;
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "engine went down",
        ))
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
