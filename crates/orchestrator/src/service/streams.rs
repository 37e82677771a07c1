//! Domain commands about streams: started and ended events, stopping a stream
//! on its engine, and stat snapshots.

use super::{Orchestrator, ServiceError};
use crate::domain::{StatSnapshot, Stream, StreamStatus};
use crate::registry::{RegistryError, StreamStart};

impl Orchestrator {
    /// A proxy (or the built-in one) started a stream.
    pub async fn stream_started(&self, event: StreamStart) -> Result<Stream, ServiceError> {
        let stream = self
            .write(|registry, now| registry.stream_started(event, now))
            .await?;
        self.metrics.events_started.inc();
        tracing::debug!(stream = %stream.id, engine = %stream.container_id, "stream started");
        Ok(stream)
    }

    /// A proxy's client left. Answers whether anything changed and the stream,
    /// if known (see `Registry::stream_ended` for the matching rules).
    pub async fn stream_ended(
        &self,
        container_id: Option<&str>,
        stream_id: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(bool, Option<Stream>), ServiceError> {
        let ended = self
            .write(|registry, now| {
                let (updated, stream, ops) =
                    registry.stream_ended(container_id, stream_id, reason, now);
                Ok::<_, std::convert::Infallible>(((updated, stream), ops))
            })
            .await?;
        self.metrics.events_ended.inc();
        Ok(ended)
    }

    /// Asks the stream's engine to stop it (`command_url?method=stop`), then
    /// ends it whatever the engine said: a hung engine must not keep a stream
    /// alive in the registry. Answers the stream and what the engine said.
    pub async fn stop_stream(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<(Stream, String), ServiceError> {
        let command_url = self
            .read(|r| {
                r.stream(id)
                    .map(|s| (s.status == StreamStatus::Started).then(|| s.command_url.clone()))
            })
            .ok_or_else(|| RegistryError::StreamNotFound(id.to_owned()))?
            .flatten();
        let engine_stop = match command_url {
            None => "no command_url".to_owned(),
            Some(url) => match self.engines.stop(&url, self.settings.health_timeout).await {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("error: {e}"),
            },
        };
        let stream = self
            .write(|registry, now| registry.stop_stream(id, reason, now))
            .await?;
        Ok((stream, engine_stop))
    }

    /// How many players read a proxied stream now (memory only).
    pub fn set_viewers(&self, stream_id: &str, viewers: crate::domain::ViewersByKind) {
        if self.registry.write().set_viewers(stream_id, viewers) {
            self.changed();
        }
    }

    /// Records a failover of a proxied stream.
    pub async fn record_failover(
        &self,
        stream_id: &str,
        failover: crate::domain::FailoverRecord,
        keep: usize,
    ) -> Result<(), ServiceError> {
        self.write(|registry, _| {
            Ok::<_, std::convert::Infallible>((
                (),
                registry.push_failover(stream_id, failover, keep),
            ))
        })
        .await
    }

    /// Keeps a stat snapshot of a started stream (in the background).
    pub fn push_stat(&self, stream_id: &str, snapshot: StatSnapshot) {
        self.write_in_background(|registry, _| ((), registry.push_stat(stream_id, snapshot)));
    }
}
