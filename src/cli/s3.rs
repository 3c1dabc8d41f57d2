//! The flags of an `s3://BUCKET/PREFIX` mirror, shared by import, status
//! and rollback, and the one place that turns them into an
//! [`S3Mirror`]. Credentials never come from flags (they would show in
//! `ps` and shell history): only from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.

use std::path::Path;
use std::sync::Arc;

use gapferry::error::UsageError;
use gapferry::mirror::s3mirror::S3Mirror;
use gapferry::s3::{Client, Config, Location};

/// How to reach the store of an `s3://` mirror.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Args {
    /// With an s3:// mirror: the store's S3 API endpoint, e.g.
    /// http://127.0.0.1:3900 [default: $AWS_ENDPOINT_URL_S3, else
    /// $AWS_ENDPOINT_URL]. Credentials come from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// With an s3:// mirror: the signing region [default: $AWS_REGION,
    /// else $AWS_DEFAULT_REGION, else us-east-1; Garage's is `garage`].
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// With an s3:// mirror: address buckets as ENDPOINT/BUCKET/KEY
    /// (Garage, MinIO and Ceph without wildcard DNS) instead of
    /// BUCKET.ENDPOINT/KEY.
    #[arg(long)]
    pub s3_path_style: bool,
}

impl S3Args {
    /// Whether any s3 flag was given (refused without an s3:// mirror).
    fn given(&self) -> bool {
        self.s3_endpoint.is_some() || self.s3_region.is_some() || self.s3_path_style
    }

    /// The s3:// mirror `--mirror` names, or None for a folder. An s3://
    /// mirror needs `--state-dir` (its lock, state and ledger are local).
    pub fn mirror(
        &self,
        mirror: Option<&Path>,
        state_dir: Option<&Path>,
    ) -> anyhow::Result<Option<Arc<S3Mirror>>> {
        let s3 = mirror
            .and_then(|m| m.to_str())
            .filter(|m| Location::is_s3(m));
        let Some(url) = s3 else {
            if self.given() {
                return Err(UsageError(
                    "--s3-endpoint, --s3-region and --s3-path-style go with --mirror s3://BUCKET/PREFIX"
                        .into(),
                )
                .into());
            }
            return Ok(None);
        };
        let location: Location = url
            .parse()
            .map_err(|e: String| UsageError(format!("--mirror {url}: {e}")))?;
        let Some(state_dir) = state_dir else {
            return Err(UsageError(format!(
                "--mirror {location} needs --state-dir DIR: the lock, state and ledger of an \
                 s3:// mirror live on this machine (e.g. --state-dir /var/lib/gapferry/s3-{})",
                location.bucket
            ))
            .into());
        };
        let config = Config::from_env(
            self.s3_endpoint.as_deref(),
            self.s3_region.as_deref(),
            self.s3_path_style,
        )?;
        let client = Client::new(config, location)?;
        Ok(Some(Arc::new(S3Mirror::new(client, state_dir))))
    }
}
