//! How to reach a store: endpoint, region, addressing style, credentials.

use url::Url;

use super::S3Error;

/// Everything needed to sign and send requests to one store.
#[derive(Clone)]
pub struct Config {
    /// `http(s)://host:port` of the S3 API (`--s3-endpoint`, else
    /// `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`).
    pub endpoint: Url,
    /// Signing region (`--s3-region`, else `AWS_REGION`, else
    /// `AWS_DEFAULT_REGION`, else `us-east-1`). Garage's default is `garage`.
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of
    /// virtual-hosted (`bucket.endpoint/key`) (`--s3-path-style`).
    pub path_style: bool,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// From the flags given (None: not given) and the environment.
    /// Errors name the missing variable or flag and the fix.
    pub fn from_env(
        endpoint: Option<&str>,
        region: Option<&str>,
        path_style: bool,
    ) -> Result<Config, S3Error> {
        todo!("{endpoint:?} {region:?} {path_style}")
    }
}
