//! The built-in stream proxy's data plane: one shared engine stream per
//! content, fanned out to every viewer, moved to another engine when the
//! engine hangs or dies, without closing viewers' connections.
//!
//! - [`ts`]: the MPEG-TS parsing and rewriting the proxy needs.
//! - [`ring`]: the bounded chunk ring viewers read from by cursor.

pub mod ring;
pub mod session;
pub mod ts;

pub use session::{
    ByteStream, EndReason, EngineKey, FailReason, Failover, OpenError, SessionConfig, SessionEvent,
    SessionHandle, Source, SourceProvider, SubscribeError, Viewer,
};
