//! The built-in stream proxy's data plane: one shared engine stream per
//! content, fanned out to every viewer, moved to another engine when the
//! engine hangs or dies, without closing viewers' connections.
//!
//! - [`ts`]: the MPEG-TS parsing and rewriting the proxy needs.
//! - [`ring`]: the bounded chunk ring viewers read from by cursor.
//! - [`session`]: ingest, failover and splice, headroom, viewers.
//! - [`hls`]: the session's bytes cut into HLS segments, a live window of them.
//!
//! The control plane implements [`SourceProvider`] (engine selection,
//! reservation, the request to the engine), keeps one [`SessionHandle`] per
//! content, records the [`SessionEvent`]s, and serves each player a
//! [`Viewer`]:
//!
//! ```no_run
//! use std::{future::Future, pin::Pin, sync::Arc};
//! use futures::StreamExt;
//! use orchestrator::proxy::{
//!     EngineKey, OpenError, SessionConfig, SessionEvent, SessionHandle, Source, SourceProvider,
//! };
//!
//! struct Engines; // would hold the registry, the selector and a reqwest::Client
//!
//! impl SourceProvider for Engines {
//!     fn open<'a>(
//!         &'a self,
//!         exclude: &'a [EngineKey],
//!     ) -> Pin<Box<dyn Future<Output = Result<Source, OpenError>> + Send + 'a>> {
//!         Box::pin(async move {
//!             // Pick an engine not in `exclude`, GET its stream, and hand over
//!             // the body: `response.bytes_stream().map(|r| r.map_err(std::io::Error::other))`.
//!             let _ = exclude;
//!             Err(OpenError("no engine".into()))
//!         })
//!     }
//! }
//!
//! # async fn handler() -> Result<(), Box<dyn std::error::Error>> {
//! let (session, mut events) =
//!     SessionHandle::start(Arc::new(Engines), SessionConfig::default()).await?;
//! tokio::spawn(async move {
//!     while let Some(event) = events.recv().await {
//!         match event {
//!             SessionEvent::Started { engine } => { /* record */ let _ = engine; }
//!             SessionEvent::FailedOver(f) => { /* record f, mark f.from unhealthy */ let _ = f; }
//!             SessionEvent::Ended { reason } => { /* drop the session from the map */ let _ = reason; }
//!         }
//!     }
//! });
//! let viewer = session.subscribe()?; // SubscribeError::Full -> 503
//! let body = axum::body::Body::from_stream(viewer);
//! # let _ = body;
//! // The health monitor, on finding the engine unhealthy:
//! session.fail_over("engine unhealthy");
//! // When the last viewer is gone (session.viewer_count() == 0) for a while:
//! session.close();
//! # Ok(())
//! # }
//! ```

pub mod hls;
pub mod hub;
pub mod ring;
pub mod session;
pub mod ts;

pub use session::{
    ByteStream, EndReason, EngineKey, FailReason, Failover, OpenError, SessionConfig, SessionEvent,
    SessionHandle, Source, SourceProvider, SubscribeError, Tap, Tapped, Viewer,
};
