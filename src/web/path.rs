//! Canonical request paths. The router matches a *decoded* path (actix decodes `%66` to
//! `f`) while the edge, the redirect listener and the logs classify the raw one, so two
//! spellings of one path could be classified differently — `/%66hir/Patient` was redirected
//! as a console page on plain HTTP and then served as FHIR over HTTPS. Rather than decode
//! and re-check in several places, the edge refuses (400) every path that is not already in
//! the one spelling the route table uses, before any routing or classification, on both
//! listeners.
//!
//! Canonical: starts with `/`; segments separated by single slashes (no empty segment
//! except a trailing slash); no `.` or `..` segment; only unreserved characters (RFC 3986
//! `ALPHA DIGIT - . _ ~`) and `$` (FHIR operations such as `$everything`), so no
//! percent-encoding at all (an encoded slash included); the first segment in lower case (every top-level route is: `/FHIR` is not `/fhir`).

/// The fixed message of the refusal (never echoes the path).
pub const NOT_CANONICAL: &str = "The request path is not in canonical form (percent-encoding, \
dot segments, repeated slashes and upper-case route prefixes are refused). Nothing was processed.";

/// Whether `path` is in canonical form (see the module documentation).
pub fn is_canonical(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            if i == last {
                continue;
            }
            return false;
        }
        if *segment == "." || *segment == ".." {
            return false;
        }
        let allowed =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'$');
        if !segment.bytes().all(allowed) {
            return false;
        }
    }
    !segments[0].bytes().any(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::is_canonical;

    #[test]
    fn the_route_tables_spellings_are_canonical() {
        for p in [
            "/",
            "/fhir",
            "/fhir/",
            "/fhir/metadata",
            "/fhir/Patient",
            "/fhir/Patient/0b7c6a1e-8e0b-4c38-9d68-2a4c1f3b9e10",
            "/api/admin/users/abc/roles/privacy_officer",
            "/console/users/abc/grant-role",
            "/static/console.css",
            "/dev/jwks.json",
            "/healthz",
            "/fhir/Patient/0b7c6a1e-8e0b-4c38-9d68-2a4c1f3b9e10/$everything",
        ] {
            assert!(is_canonical(p), "{p}");
        }
    }

    #[test]
    fn every_other_spelling_is_refused() {
        for p in [
            "",
            "fhir/Patient",
            "*",
            "/%66hir/Patient",
            "/%61pi/admin/users",
            "/fhir%2FPatient",
            "/fhir/%50atient",
            "/%2e/fhir/Patient",
            "/./fhir/Patient",
            "/fhir/./Patient",
            "/x/../fhir/Patient",
            "/fhir/Patient/..",
            "//fhir/Patient",
            "/fhir//Patient",
            "/FHIR",
            "/FHIR/Patient",
            "/Fhir/Patient",
            "/API/admin/users",
            "/Console",
            "/fhir;x/Patient",
            "/fhir/Patient;jsessionid=1",
            "/fhir\\Patient",
            "/fhir/Pat ient",
            "/fhir/Patiént",
        ] {
            assert!(!is_canonical(p), "{p}");
        }
    }
}
