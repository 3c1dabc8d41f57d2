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
        Config::from_lookup(endpoint, region, path_style, |name| {
            std::env::var(name).ok()
        })
    }

    /// [`Config::from_env`] with the environment read through `var`
    /// (unset and empty variables count as not given).
    pub fn from_lookup(
        endpoint: Option<&str>,
        region: Option<&str>,
        path_style: bool,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, S3Error> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let (endpoint, from) = match endpoint {
            Some(e) => (e.to_string(), "--s3-endpoint".to_string()),
            None => ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                .iter()
                .find_map(|n| var(n).map(|v| (v, n.to_string())))
                .ok_or_else(|| {
                    S3Error::Config(
                        "no S3 endpoint: give --s3-endpoint URL (e.g. http://127.0.0.1:3900) or set \
                         AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL)"
                            .to_string(),
                    )
                })?,
        };
        let endpoint = parse_endpoint(endpoint.trim(), &from)?;
        let region =
            match region {
                Some(r) if r.trim().is_empty() => return Err(S3Error::Config(
                    "--s3-region is empty; give the store's region (Garage's default is `garage`)"
                        .to_string(),
                )),
                Some(r) => r.trim().to_string(),
                None => var("AWS_REGION")
                    .or_else(|| var("AWS_DEFAULT_REGION"))
                    .map(|r| r.trim().to_string())
                    .unwrap_or_else(|| "us-east-1".to_string()),
            };
        let access_key = var("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?;
        let secret_key =
            var("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?;
        Ok(Config {
            endpoint,
            region,
            path_style,
            access_key: access_key.trim().to_string(),
            secret_key: secret_key.trim().to_string(),
            session_token: var("AWS_SESSION_TOKEN").map(|t| t.trim().to_string()),
        })
    }
}

fn missing(name: &str) -> S3Error {
    S3Error::Config(format!(
        "{name} is not set: an s3:// mirror takes its credentials from AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), never from flags; export them \
         (e.g. from `garage key info --show-secret KEY`)"
    ))
}

/// An `http(s)://host[:port][/path]` URL without credentials, query or
/// fragment. `from` names the flag or variable it came from.
fn parse_endpoint(value: &str, from: &str) -> Result<Url, S3Error> {
    let bad = |why: &str| {
        S3Error::Config(format!(
            "{from} {value:?}: {why}; give the S3 API URL, e.g. http://127.0.0.1:3900 or \
             https://s3.example.internal"
        ))
    };
    let url = Url::parse(value).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// endpoints are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials do not go in the URL (use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("the URL has a query or fragment"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const KEYS: &[(&str, &str)] = &[
        ("AWS_ACCESS_KEY_ID", "GKabc"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
    ];

    /// The credentials and `extra`, as a lookup.
    fn with_keys(extra: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let all: Vec<(&str, &str)> = KEYS.iter().chain(extra).copied().collect();
        env(&all)
    }

    #[test]
    fn flags_win_over_the_environment() {
        let e = with_keys(&[
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1"),
            ("AWS_REGION", "eu-west-3"),
        ]);
        let c = Config::from_lookup(Some("http://[::1]:3900"), Some("garage"), true, e).unwrap();
        assert_eq!(c.endpoint.as_str(), "http://[::1]:3900/");
        assert_eq!(c.region, "garage");
        assert!(c.path_style);
        assert_eq!(c.access_key, "GKabc");
        assert_eq!(c.session_token, None);
    }

    #[test]
    fn environment_order_and_defaults() {
        let e = with_keys(&[
            ("AWS_ENDPOINT_URL", "http://generic:1"),
            ("AWS_ENDPOINT_URL_S3", "https://s3.site:9000"),
            ("AWS_DEFAULT_REGION", "garage"),
            ("AWS_SESSION_TOKEN", "tok"),
        ]);
        let c = Config::from_lookup(None, None, false, e).unwrap();
        assert_eq!(c.endpoint.as_str(), "https://s3.site:9000/");
        assert_eq!(c.region, "garage");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        let e = with_keys(&[("AWS_ENDPOINT_URL", "http://generic:1")]);
        let c = Config::from_lookup(None, None, false, e).unwrap();
        assert_eq!(c.endpoint.as_str(), "http://generic:1/");
        assert_eq!(c.region, "us-east-1");
        let e = with_keys(&[
            ("AWS_ENDPOINT_URL", "http://generic:1"),
            ("AWS_REGION", "r1"),
            ("AWS_DEFAULT_REGION", "r2"),
        ]);
        assert_eq!(
            Config::from_lookup(None, None, false, e).unwrap().region,
            "r1"
        );
    }

    #[test]
    fn missing_endpoint_names_the_flag_and_variables() {
        let e = with_keys(&[]);
        let err = Config::from_lookup(None, None, false, e)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--s3-endpoint"), "{err}");
        assert!(err.contains("AWS_ENDPOINT_URL_S3"), "{err}");
    }

    #[test]
    fn missing_credentials_name_the_variable() {
        let err = Config::from_lookup(
            Some("http://127.0.0.1:3900"),
            None,
            false,
            env(&[("AWS_SECRET_ACCESS_KEY", "x")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("AWS_ACCESS_KEY_ID is not set"), "{err}");
        let err = Config::from_lookup(
            Some("http://127.0.0.1:3900"),
            None,
            false,
            env(&[("AWS_ACCESS_KEY_ID", "GK"), ("AWS_SECRET_ACCESS_KEY", " ")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("AWS_SECRET_ACCESS_KEY is not set"), "{err}");
        assert!(matches!(
            Config::from_lookup(Some("http://h:1"), None, false, env(&[])).unwrap_err(),
            S3Error::Config(_)
        ));
    }

    #[test]
    fn bad_endpoints_name_where_they_came_from() {
        for (value, why) in [
            ("localhost:3900", "only http:// and https://"),
            ("ftp://h/", "only http:// and https://"),
            ("not a url", "not a URL"),
            ("http://user:pw@h:1", "credentials do not go in the URL"),
            ("http://h:1/?x=1", "query or fragment"),
        ] {
            let err = Config::from_lookup(Some(value), None, false, with_keys(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--s3-endpoint"), "{value}: {err}");
            assert!(err.contains(why), "{value}: {err}");
        }
        let e = with_keys(&[("AWS_ENDPOINT_URL", "s3.site")]);
        let err = Config::from_lookup(None, None, false, e)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("AWS_ENDPOINT_URL \"s3.site\""), "{err}");
    }
}
