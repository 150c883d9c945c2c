//! The OpenAPI description the daemon serves at `/openapi.json` (also the API's reference doc).

/// The document, kept beside the crate as `openapi.json`.
pub const DOCUMENT: &str = include_str!("../openapi.json");

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_json_and_lists_the_resources() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        let paths = v["paths"].as_object().unwrap();
        for p in [
            "/api/v1/config/commit",
            "/api/v1/tunnels",
            "/api/v1/plugins",
            "/api/v1/events",
            "/metrics",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
    }
}
