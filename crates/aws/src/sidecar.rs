//! The sidecar's AWS components ([`selfheal_sidecar::build::AwsComponents`]):
//! the CloudWatch source with its Glue evidence, and the Glue actuator, each
//! built from its config section. The sidecar crate builds every other
//! component itself; these live here because only this crate links the SDK
//! (and it depends on the sidecar crate, so the sidecar cannot call it
//! directly).

use crate::evidence::{CatalogTables, Evidence, EvidenceSources};
use selfheal_sidecar::actuate::Actuator;
use selfheal_sidecar::build::{AwsComponents, BuildError, Discovered, FleetClients};
use selfheal_sidecar::config::{ActuatorConfig, CloudWatchConfig, GluePipeline, SidecarConfig};
use selfheal_sidecar::BoxFuture;
use std::sync::Arc;

/// The AWS components, built with the SDK configuration of `[aws]`
/// ([`crate::sdk_config`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Components;

impl AwsComponents for Components {
    fn cloudwatch<'a>(
        &'a self,
        cfg: &'a SidecarConfig,
        c: &'a CloudWatchConfig,
    ) -> BoxFuture<'a, Result<Discovered, BuildError>> {
        Box::pin(cloudwatch_source(cfg, c))
    }

    fn glue<'a>(
        &'a self,
        cfg: &'a SidecarConfig,
        pipelines: &'a [GluePipeline],
    ) -> BoxFuture<'a, Result<Arc<dyn Actuator>, BuildError>> {
        Box::pin(async move {
            let sdk = crate::sdk_config(&cfg.aws).await;
            let client = crate::glue::Client::new(&sdk);
            Ok(Arc::new(crate::glue::GlueActuator::new(client, pipelines.to_vec(), cfg.model.seed))
                as Arc<dyn Actuator>)
        })
    }

    fn fleet_clients<'a>(&'a self, cfg: &'a SidecarConfig) -> BoxFuture<'a, FleetClients> {
        use selfheal_sidecar::fleet::lib::{aws_sdk_dynamodb as ddb, aws_sdk_s3 as s3};
        Box::pin(async move {
            let sdk = crate::sdk_config(&cfg.aws).await;
            let s3 = s3::config::Builder::from(&sdk)
                // A local or VPC endpoint serves path-style addresses; AWS serves both.
                .force_path_style(cfg.aws.endpoint_url.is_some())
                // Checksums only where the API requires them: the SDK's
                // newer default (flexible checksums on every upload) is
                // refused by some S3-compatible stores.
                .request_checksum_calculation(s3::config::RequestChecksumCalculation::WhenRequired)
                .build();
            (ddb::Client::new(&sdk), s3::Client::from_conf(s3))
        })
    }
}

/// The CloudWatch source of `c`, with Glue evidence: each watched job's runs;
/// catalog drift where the glue actuator's pipeline of the same name names
/// its tables. Discovers (ListMetrics) what each pipeline publishes now; a
/// failed discovery is retried by the first poll.
async fn cloudwatch_source(cfg: &SidecarConfig, c: &CloudWatchConfig) -> Result<Discovered, BuildError> {
    let sdk = crate::sdk_config(&cfg.aws).await;
    let client = crate::cloudwatch::Client::new(&sdk);
    let now = selfheal_sidecar::now_ms() / 1000;
    let glue_pipelines: &[GluePipeline] = match &cfg.actuator {
        ActuatorConfig::Glue { pipelines } => pipelines,
        _ => &[],
    };
    let sources = c
        .pipelines
        .iter()
        .map(|p| {
            let g = glue_pipelines.iter().find(|g| g.name == p.name);
            let tables = g.and_then(|g| {
                Some(CatalogTables {
                    database: g.database.clone()?,
                    table: g.table.clone()?,
                    source_table: g.source_table.clone()?,
                })
            });
            EvidenceSources {
                pipeline: p.name.clone(),
                job_name: (!p.job_name.is_empty()).then(|| p.job_name.clone()),
                tables,
            }
        })
        .collect();
    let evidence = Evidence::new(crate::glue::Client::new(&sdk), sources);
    let mut src =
        crate::cloudwatch::CloudWatchSource::new(client, c.clone(), now, cfg.model.seed).with_evidence(evidence);
    let mut published = Vec::new();
    match src.discover(now).await {
        Ok(()) => {
            for p in &c.pipelines {
                match src.published(&p.name) {
                    Some(set) => {
                        tracing::info!(pipeline = %p.name, job = %p.job_name,
                            metrics = ?set.iter().map(|m| m.name()).collect::<Vec<_>>(),
                            "the pipeline publishes these metrics (ListMetrics) and evidence (Glue); only they are read");
                        published.push((p.name.clone(), set));
                    }
                    None => {
                        tracing::info!(pipeline = %p.name, "metrics read as [source] metrics names them (not discovered)")
                    }
                }
            }
        }
        Err(f) => tracing::warn!(error = %f.message, kind = f.kind.name(),
            "ListMetrics failed at start: the first poll discovers again"),
    }
    Ok((Box::new(src), published))
}
