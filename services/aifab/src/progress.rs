//! The CLI's progress bars, one style for every command.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `prefix` (0 when the length is learnt later).
pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}
