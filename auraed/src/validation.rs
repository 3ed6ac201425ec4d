//! Validation of request fields. Every check names the field it rejects.

use std::ffi::CString;

use crate::error::ApiError;

/// Longest argument list or environment accepted.
pub const MAX_LIST: usize = 4096;
/// Longest single argument, variable or path accepted.
pub const MAX_STRING: usize = 64 * 1024;

/// Names of cells and executables: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
    let bytes = value.as_bytes();
    let ok_inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ok_edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(ok_inner)
        && bytes.first().is_some_and(ok_edge)
        && bytes.last().is_some_and(ok_edge);
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!(
                "{value:?} is not a valid name: use 1 to 63 characters of a-z, 0-9 and '-', \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

/// A string passed to the kernel: no NUL, bounded length.
pub fn c_string(field: &str, value: &str) -> Result<CString, ApiError> {
    if value.len() > MAX_STRING {
        return Err(ApiError::invalid(
            field,
            format!("longer than {MAX_STRING} bytes"),
        ));
    }
    CString::new(value).map_err(|_| ApiError::invalid(field, "contains a NUL byte"))
}

/// An environment variable name: non-empty, no '=' and no NUL.
pub fn env_name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.contains('=') || value.contains('\0') {
        return Err(ApiError::invalid(
            field,
            format!("{value:?} is not a valid variable name (non-empty, without '=' or NUL)"),
        ));
    }
    Ok(())
}

/// A list no longer than [`MAX_LIST`].
pub fn list_len(field: &str, len: usize) -> Result<(), ApiError> {
    if len > MAX_LIST {
        return Err(ApiError::invalid(
            field,
            format!("more than {MAX_LIST} entries"),
        ));
    }
    Ok(())
}

/// An integer in `lo..=hi`.
pub fn range(field: &str, value: u64, lo: u64, hi: u64) -> Result<(), ApiError> {
    if value < lo || value > hi {
        return Err(ApiError::invalid(
            field,
            format!("{value} is out of range {lo}..={hi}"),
        ));
    }
    Ok(())
}

/// An absolute path.
pub fn absolute_path(field: &str, value: &str) -> Result<(), ApiError> {
    c_string(field, value)?;
    if !value.starts_with('/') {
        return Err(ApiError::invalid(
            field,
            format!("{value:?} is not an absolute path"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_dns_label_rule() {
        for good in ["a", "web", "a-b", "0", "cell-01", &"a".repeat(63)] {
            assert!(name("name", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a/b",
            "..",
            "a\0b",
            "a.b",
            &"a".repeat(64),
        ] {
            let err = name("name", bad).unwrap_err().to_string();
            assert!(err.starts_with("name: "), "{err}");
        }
    }

    #[test]
    fn c_strings_reject_nul_and_oversize() {
        assert!(c_string("f", "ok").is_ok());
        assert!(c_string("f", "a\0")
            .unwrap_err()
            .to_string()
            .contains("NUL"));
        assert!(c_string("f", &"x".repeat(MAX_STRING + 1)).is_err());
    }

    #[test]
    fn ranges_and_paths() {
        assert!(range("x", 5, 1, 10).is_ok());
        assert!(range("x", 0, 1, 10)
            .unwrap_err()
            .to_string()
            .contains("x: 0 is out of range"));
        assert!(absolute_path("cwd", "rel").is_err());
        assert!(env_name("env[0].name", "A=B").is_err());
    }
}
