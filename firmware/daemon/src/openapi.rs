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

    /// Every route the router serves, with its methods, read from the router's source: the
    /// document must list each one (issue 14: it had drifted). `tests/api.rs` checks the reverse
    /// against a running daemon.
    #[test]
    fn every_routed_operation_is_documented() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        let src = include_str!("server.rs");
        let body = &src[src.find("pub fn router(").unwrap()..];
        let body = &body[..body.find(".fallback(").unwrap()];
        let mut seen = 0;
        for chunk in body.split(".route(").skip(1) {
            let path = chunk.trim_start().trim_start_matches('"');
            let path = &path[..path.find('"').unwrap()];
            let full = if path == "/metrics" || path == "/openapi.json" {
                path.to_owned()
            } else {
                format!("{}{path}", isthmus_api::PREFIX)
            };
            let handlers = chunk.split(".layer(").next().unwrap();
            for method in ["get", "post", "put", "delete", "patch"] {
                if handlers.contains(&format!("{method}(")) {
                    assert!(
                        v["paths"][&full][method].is_object(),
                        "{} {full} is routed but not in openapi.json",
                        method.to_uppercase()
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 26, "only {seen} routed operations found: has router() changed shape?");
    }
}
