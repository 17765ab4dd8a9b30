//! `--admin-token` / `--admin-token-file`: the bearer token the admin API
//! requires on writes (see `admin::auth`).

use std::path::PathBuf;

use anyhow::{bail, Context};

/// The admin API's bearer token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// The token from the flag or the file (one of them at most), trimmed.
pub(super) fn resolve(
    token: &Option<String>,
    file: &Option<PathBuf>,
) -> anyhow::Result<Option<AdminToken>> {
    let token = match (token, file) {
        (Some(_), Some(_)) => bail!("pass either --admin-token or --admin-token-file, not both"),
        (Some(token), None) => token.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| {
                format!(
                    "cannot read --admin-token-file {}; check the path and its permissions",
                    path.display()
                )
            })?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        bail!("the admin token is empty; pass a non-empty --admin-token (or leave it unset to keep the admin API open)");
    }
    Ok(Some(AdminToken(token)))
}
