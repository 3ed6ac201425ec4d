//! Validation of request fields. Every check names the field it rejects.

use std::ffi::CString;

use crate::error::ApiError;

/// Longest argument list or environment accepted.
pub const MAX_LIST: usize = 4096;
/// Longest single argument, variable or path accepted.
pub const MAX_STRING: usize = 64 * 1024;
/// Most bytes of arguments and environment together (each counted with
/// its NUL and its pointer, as the kernel does), well under the 2 MiB that
/// `execve` takes with the default 8 MiB stack, so an oversize command is
/// refused here and not by the kernel's `E2BIG`.
pub const MAX_ARGV_ENV: usize = 1024 * 1024;
/// How much of a rejected value an error message shows.
pub const SHOWN: usize = 64;

/// A value as an error message shows it: quoted, with control characters
/// escaped, cut to [`SHOWN`] characters with its full length noted, so an
/// error about a huge field still fits in gRPC trailers.
pub fn shown(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(SHOWN).collect();
    if chars.next().is_none() {
        format!("{head:?}")
    } else {
        format!("{head:?}... ({} bytes)", value.len())
    }
}

/// The total size of an argument list and environment as `execve` counts
/// it: each string with its NUL, and a pointer for each.
pub fn argv_env_size<'a>(
    field: &str,
    strings: impl Iterator<Item = &'a [u8]>,
) -> Result<(), ApiError> {
    let total: usize = strings
        .map(|s| s.len() + 1 + std::mem::size_of::<usize>())
        .sum();
    if total > MAX_ARGV_ENV {
        return Err(ApiError::invalid(
            field,
            format!(
                "arguments and environment take {total} bytes; at most {MAX_ARGV_ENV} are accepted"
            ),
        ));
    }
    Ok(())
}

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
                "{} is not a valid name: use 1 to 63 characters of a-z, 0-9 and '-', \
                 starting and ending with a letter or digit",
                shown(value)
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
            format!(
                "{} is not a valid variable name (non-empty, without '=' or NUL)",
                shown(value)
            ),
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
            format!("{} is not an absolute path", shown(value)),
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
    fn errors_show_a_short_prefix_of_a_huge_value() {
        let huge = "a".repeat(1 << 20);
        let err = name("name", &huge).unwrap_err().to_string();
        assert!(err.len() < 300, "{}", err.len());
        assert!(err.contains("(1048576 bytes)"), "{err}");
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        // A cut never splits a character.
        let wide = "\u{e9}".repeat(100);
        assert!(shown(&wide).starts_with(&format!("{:?}", "\u{e9}".repeat(SHOWN))));
    }

    #[test]
    fn argv_and_env_are_bounded_together() {
        let arg = vec![b'x'; 60 * 1024];
        let many: Vec<&[u8]> = std::iter::repeat_n(arg.as_slice(), 16).collect();
        assert!(argv_env_size("executable.args", many.iter().copied()).is_ok());
        let too_many: Vec<&[u8]> = std::iter::repeat_n(arg.as_slice(), 18).collect();
        let err = argv_env_size("executable.args", too_many.iter().copied())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("executable.args: "), "{err}");
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
