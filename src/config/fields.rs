//! Serde helpers the settings types of several components share.

/// `#[serde(default = "...")]` for settings that default to on.
pub(crate) const fn default_true() -> bool {
    true
}
