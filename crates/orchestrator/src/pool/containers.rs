//! Containers in general: any container (`POST /provision`), inspection,
//! listing and removal of the ones we manage.

use std::collections::BTreeMap;

use super::labels::ports_from_labels;
use super::{GenericRequest, Pool, ProvisionError};
use crate::runtime::{ContainerInfo, ContainerSpec, RuntimeError};

impl Pool {
    /// Starts any container, labelled as ours (`POST /provision`). Whoever
    /// reaches this can run containers on the host, so only allowed images run,
    /// and the spec has no way to ask for privileges, host networking or mounts.
    pub async fn provision_generic(
        &self,
        request: GenericRequest,
    ) -> Result<ContainerInfo, ProvisionError> {
        if !self
            .settings
            .allowed_images
            .iter()
            .any(|i| i == &request.image)
        {
            return Err(ProvisionError::ImageNotAllowed(
                request.image,
                self.settings.allowed_images.join(", "),
            ));
        }
        let mut labels = request.labels;
        labels.insert(
            self.settings.label.key.clone(),
            self.settings.label.value.clone(),
        );
        let spec = ContainerSpec {
            name: format!("svc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            image: request.image,
            env: request.env.into_iter().collect(),
            labels,
            ports: request.ports,
            network: self.settings.network.clone(),
            limits: self.settings.limits,
            ..Default::default()
        };
        let info = self.runtime.create_and_start(spec).await?;
        self.orch
            .metrics
            .provision
            .get_or_create(&crate::metrics::KindLabel { kind: "generic" })
            .inc();
        tracing::info!(container = %info.id, name = %info.name, image = %info.image, "container provisioned");
        Ok(info)
    }

    /// A managed container, by id or name; containers without our label are
    /// not shown.
    pub async fn inspect_managed(&self, id: &str) -> Result<ContainerInfo, ProvisionError> {
        match self.runtime.inspect(id).await? {
            Some(info) if info.has_label(&self.settings.label) => Ok(info),
            Some(_) => Err(ProvisionError::NotManaged(
                id.to_owned(),
                self.settings.label.to_string(),
            )),
            None => Err(ProvisionError::NotFound(id.to_owned())),
        }
    }

    pub async fn list_managed(&self) -> Result<Vec<ContainerInfo>, ProvisionError> {
        Ok(self.runtime.list_managed(&self.settings.label).await?)
    }

    /// Stops and removes a container we manage; its engine leaves the registry
    /// and its streams end with `reason`.
    pub async fn remove(&self, id: &str, reason: &str) -> Result<ContainerInfo, ProvisionError> {
        let info = self.inspect_managed(id).await?;
        match self.runtime.stop_and_remove(&info.id).await {
            Ok(()) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.forget(&info.id, &info.labels, reason).await;
        tracing::info!(container = %info.id, name = %info.name, reason, "container removed");
        Ok(info)
    }

    /// Drops an engine whose container is gone (or going) and frees its ports.
    pub(super) async fn forget(&self, id: &str, labels: &BTreeMap<String, String>, reason: &str) {
        // Behind a VPN node, the ports are the node's: they stay taken.
        let behind_node = labels.contains_key(crate::domain::labels::VPN_NODE_LABEL);
        if let Some(ports) = ports_from_labels(labels).filter(|_| !behind_node) {
            self.ports.release(&ports);
        }
        let removed = self.orch.forget_engine(id, reason).await;
        if let Err(e) = removed {
            tracing::debug!(container = %id, error = %e, "engine was not in the registry");
        }
    }
}
