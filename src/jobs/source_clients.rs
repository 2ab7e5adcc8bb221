//! The client each file of a plan is fetched with: the job's own, or, for a submitted manifest
//! whose request said how it is reached (headers, OAuth metadata), one that reaches it so. Looked
//! up once per manifest of the plan.
use std::{collections::HashMap, sync::Arc};

use crate::{
    domain::JobFile,
    jobs::{context::JobContext, error::JobError, provider_client::ProviderClient},
};

pub struct SourceClients {
    job: Arc<ProviderClient>,
    by_manifest: HashMap<i64, Arc<ProviderClient>>,
}

impl SourceClients {
    pub fn new(job: Arc<ProviderClient>) -> Self {
        Self { job, by_manifest: HashMap::new() }
    }

    /// The client for `file`, as the request that named its manifest said.
    pub async fn for_file(
        &mut self,
        ctx: &JobContext,
        file: &JobFile,
    ) -> Result<Arc<ProviderClient>, JobError> {
        if let Some(found) = self.by_manifest.get(&file.manifest_idx) {
            return Ok(found.clone());
        }
        let manifests = ctx.store.manifests(&file.job_id).await?;
        let url = manifests.iter().find(|m| m.idx == file.manifest_idx).map(|m| m.url.as_str());
        let requests = ctx.submissions.manifest_requests(&file.job_id).await?;
        // The newest request naming it: files are fetched while their request is still open.
        let access = requests.iter().rev().find(|r| url.is_some() && r.manifest_url.as_deref() == url);
        let client = match access.map(|r| &r.access).filter(|a| !a.is_plain()) {
            Some(access) => Arc::new(self.job.reaching(access)),
            None => self.job.clone(),
        };
        self.by_manifest.insert(file.manifest_idx, client.clone());
        Ok(client)
    }
}
