//! Artifact locations: parsing, joining and printing artifact URIs.

use std::path::PathBuf;

use super::ArtifactError;

/// Where artifacts are: a local directory or an S3 bucket and key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactLocation {
    /// An absolute local directory.
    Local(PathBuf),
    /// `s3://bucket/prefix`; `prefix` has no leading or trailing `/` (may be empty).
    S3 { bucket: String, prefix: String },
}

impl ArtifactLocation {
    /// Parse an artifact URI (see the module docs). Relative plain paths are made
    /// absolute against the current directory.
    pub fn parse(uri: &str) -> Result<Self, ArtifactError> {
        let bad = |reason: &str| ArtifactError::BadUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let uri_trimmed = uri.trim();
        if uri_trimmed.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(rest) = uri_trimmed.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket: expected s3://bucket/prefix"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == "." || p == "..") {
                return Err(bad("`.` and `..` are not allowed in an S3 prefix"));
            }
            return Ok(ArtifactLocation::S3 {
                bucket: bucket.to_string(),
                prefix: collapse_slashes(prefix),
            });
        }
        if let Some(rest) = uri_trimmed.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("a file:// URI needs an absolute path: file:///abs/dir"));
            }
            return Ok(ArtifactLocation::Local(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = uri_trimmed.split_once("://") {
            return Err(bad(&format!(
                "unsupported scheme {scheme:?}: expected a path, file:///abs/dir \
                 or s3://bucket/prefix"
            )));
        }
        let path = std::path::absolute(uri_trimmed)
            .map_err(|e| bad(&format!("cannot make it absolute: {e}")))?;
        Ok(ArtifactLocation::Local(path))
    }

    /// This location extended by a relative `a/b` path.
    pub fn join(&self, rel: &str) -> Self {
        let rel = rel.trim_matches('/');
        match self {
            ArtifactLocation::Local(p) if rel.is_empty() => ArtifactLocation::Local(p.clone()),
            ArtifactLocation::Local(p) => ArtifactLocation::Local(p.join(rel)),
            ArtifactLocation::S3 { bucket, prefix } => ArtifactLocation::S3 {
                bucket: bucket.clone(),
                prefix: collapse_slashes(
                    &[prefix.as_str(), rel]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("/"),
                ),
            },
        }
    }

    /// The URI: `file:///abs/dir` or `s3://bucket/prefix`.
    pub fn uri(&self) -> String {
        match self {
            ArtifactLocation::Local(p) => format!("file://{}", p.display()),
            ArtifactLocation::S3 { bucket, prefix } if prefix.is_empty() => {
                format!("s3://{bucket}")
            }
            ArtifactLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

impl std::fmt::Display for ArtifactLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

pub(super) fn collapse_slashes(s: &str) -> String {
    s.split('/')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_file_and_s3_uris() {
        assert_eq!(
            ArtifactLocation::parse("/a/b").unwrap(),
            ArtifactLocation::Local("/a/b".into())
        );
        assert_eq!(
            ArtifactLocation::parse("file:///a/b").unwrap(),
            ArtifactLocation::Local("/a/b".into())
        );
        let rel = ArtifactLocation::parse("rel/dir").unwrap();
        assert_eq!(
            rel,
            ArtifactLocation::Local(std::env::current_dir().unwrap().join("rel/dir"))
        );
        assert_eq!(
            ArtifactLocation::parse("s3://models/aifab/prod/").unwrap(),
            ArtifactLocation::S3 {
                bucket: "models".into(),
                prefix: "aifab/prod".into()
            }
        );
        assert_eq!(
            ArtifactLocation::parse("s3://models").unwrap(),
            ArtifactLocation::S3 {
                bucket: "models".into(),
                prefix: "".into()
            }
        );
        for (bad, says) in [
            ("", "empty"),
            ("s3://", "no bucket"),
            ("s3:///x", "no bucket"),
            ("s3://b/../x", "`..`"),
            ("file://relative/x", "absolute"),
            ("gs://bucket/x", "unsupported scheme \"gs\""),
        ] {
            let err = ArtifactLocation::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains(&format!("{bad:?}")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn joins_and_prints_uris() {
        let s3 = ArtifactLocation::parse("s3://models/aifab").unwrap();
        assert_eq!(s3.join("spam/v3").uri(), "s3://models/aifab/spam/v3");
        assert_eq!(
            ArtifactLocation::parse("s3://models")
                .unwrap()
                .join("/spam/v3/")
                .uri(),
            "s3://models/spam/v3"
        );
        let local = ArtifactLocation::parse("/srv/art").unwrap();
        assert_eq!(local.join("spam/v3").uri(), "file:///srv/art/spam/v3");
        assert_eq!(local.join("").uri(), "file:///srv/art");
        // A printed URI parses back to the same location.
        for l in [s3.join("spam/v3"), local.join("spam/v3")] {
            assert_eq!(ArtifactLocation::parse(&l.uri()).unwrap(), l);
        }
    }
}
