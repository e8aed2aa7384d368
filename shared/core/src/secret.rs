//! Secrets come from files (Kubernetes Secrets, Docker secrets, a mounted vault path) so
//! they never sit in a command line or an environment listing; and URLs lose their
//! user-info before they are logged or reported.

use std::path::Path;

use anyhow::Context;

/// The contents of a secret file, without the trailing newline an editor or `echo` adds.
/// An empty file is an error: an empty password is a misconfiguration, not a choice.
pub fn read_secret_file(path: impl AsRef<Path>) -> anyhow::Result<String> {
    let path = path.as_ref();
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read secret file {}", path.display()))?;
    let value = raw.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!value.is_empty(), "secret file {} is empty", path.display());
    Ok(value)
}

/// The value of the environment variable `name`, read from the file it names; `None` when
/// the variable is unset or empty.
pub fn secret_from_env_file(name: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(name) {
        Ok(path) if !path.trim().is_empty() => read_secret_file(path.trim())
            .with_context(|| name.to_string())
            .map(Some),
        _ => Ok(None),
    }
}

/// A non-empty environment variable.
pub fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `url` with any user-info (`user:password@`) replaced by `***@`, for logs and `/readyz`.
/// Each part of a comma-separated list is redacted on its own; everything up to the last
/// `@` of a part counts as user-info (a password may hold `/`, `?` or `#`), so an `@`
/// further on only redacts more, never less. Strings without `://` pass unchanged.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let Some(scheme_end) = part.find("://") else {
                return part.to_string();
            };
            let rest = &part[scheme_end + 3..];
            match rest.rfind('@') {
                Some(at) => format!("{}***{}", &part[..scheme_end + 3], &rest[at..]),
                None => part.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_stripped_and_everything_else_kept() {
        assert_eq!(
            redact_url("redis://u:s3cret@r:6379/0"),
            "redis://***@r:6379/0"
        );
        assert_eq!(redact_url("rediss://:s3cret@r:6380"), "rediss://***@r:6380");
        assert_eq!(redact_url("nats://tok@n:4222"), "nats://***@n:4222");
        assert_eq!(redact_url("nats://n:4222"), "nats://n:4222");
        // An '@' after the host only redacts more; a '/' in a password redacts all of it.
        assert_eq!(redact_url("redis://r/0?x=a@b"), "redis://***@b");
        assert_eq!(redact_url("redis://u:p/w?d@r:1"), "redis://***@r:1");
        assert_eq!(
            redact_url("nats://a:4222,nats://u:q@b:4222"),
            "nats://a:4222,nats://***@b:4222"
        );
        assert_eq!(redact_url("127.0.0.1:9092"), "127.0.0.1:9092");
        // An '@' inside the password itself.
        assert_eq!(redact_url("redis://u:p@ss@r:1"), "redis://***@r:1");
    }

    #[test]
    fn secret_files_lose_only_their_trailing_newline_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, " pa ss\n").unwrap();
        assert_eq!(read_secret_file(&p).unwrap(), " pa ss");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_secret_file(&p)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        let missing = read_secret_file(dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("cannot read secret file"));
    }
}
