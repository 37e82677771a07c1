//! The OpenAPI document served at `GET /openapi.json`, generated from the
//! handlers' `#[utoipa::path]` attributes and the wire types' `ToSchema`
//! derives. Which routes need the API key is said once, in the route table
//! ([`super::route_table`]); [`Protection`] copies it into the document.

use std::sync::OnceLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{HttpMethod, OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::Detail;
use super::panel;
use super::{containers, engines, events, hls, play, playlist, streams, system, vpn};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "AceStream Orchestrator API",
        description = "Keeps a pool of AceStream engines healthy, tracks their usage and streams, and hands stream proxies the best engine. Every timestamp is RFC 3339 with an offset (`2026-11-28T03:27:46.123Z`); a timestamp that does not exist is `null`. Every error is JSON `{\"detail\": \"…\"}` (4xx for client mistakes). Bodies are limited to 64 KiB. This document is generated from the code.",
    ),
    paths(
        engines::list,
        engines::register,
        engines::get,
        engines::remove,
        engines::health_history,
        engines::check_one,
        engines::select,
        engines::check_all,
        streams::list,
        streams::get,
        streams::stop,
        streams::stats,
        play::getstream,
        hls::manifest,
        hls::file,
        playlist::rewrite_posted,
        playlist::rewrite_remote,
        vpn::status,
        vpn::nodes,
        vpn::credentials,
        events::stream_started,
        events::stream_ended,
        system::metrics,
        system::openapi,
        system::live,
        system::ready,
        containers::provision_acestream,
        containers::provision_generic,
        containers::inspect,
        containers::remove,
        containers::by_label,
        containers::scale,
        containers::gc,
        panel::index,
        panel::asset,
        panel::events,
        panel::snapshot,
    ),
    components(schemas(Detail, crate::domain::StreamStatus, panel::PanelDelta, panel::PanelDeltas)),
    tags(
        (name = "engines", description = "The engine registry and selection."),
        (name = "health", description = "Engine health checks and history."),
        (name = "streams", description = "Streams and their statistics."),
        (name = "events", description = "Events sent by stream proxies."),
        (name = "system", description = "Metrics, this document, liveness and readiness."),
        (name = "panel", description = "The operator dashboard and its live feed."),
        (name = "containers", description = "Containers the orchestrator runs: provisioning, inspection, scaling."),
    ),
    modifiers(&Protection),
)]
struct ApiDoc;

/// Security from the route table: protected operations need the `bearer`
/// scheme and document 401 and 403; open ones say `security: []`.
struct Protection;

const BEARER: &str = "bearer";

impl Modify for Protection {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Protected endpoints need `Authorization: Bearer $API_KEY` when `API_KEY` is set: 401 without a bearer token, 403 with a wrong one. While `API_KEY` is unset, protected endpoints answer only clients on loopback (127.0.0.0/8, ::1) and 403 everyone else.",
                    ))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post, &mut item.delete] {
                if let Some(body) = operation.as_mut().and_then(|o| o.request_body.as_mut()) {
                    plain_optional_body(body);
                }
            }
        }
        for route in super::route_table() {
            let Some(operation) = operation(doc, &route.method, route.path) else {
                // The test `every_route_is_documented_with_its_protection` names it.
                continue;
            };
            if route.protected {
                operation.security =
                    Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                let responses = &mut operation.responses.responses;
                responses.entry("401".into()).or_insert_with(|| {
                    error("`API_KEY` is set and the request has no `Authorization: Bearer` token.")
                });
                responses.entry("403".into()).or_insert_with(|| error(
                    "The bearer token is not the API key, or `API_KEY` is unset and the client is not on loopback.",
                ));
            } else {
                operation.security = Some(Vec::new());
            }
        }
    }
}

fn operation<'a>(
    doc: &'a mut Document,
    method: &axum::http::Method,
    path: &str,
) -> Option<&'a mut Operation> {
    let item = doc.paths.paths.get_mut(path)?;
    let method = match *method {
        axum::http::Method::GET => HttpMethod::Get,
        axum::http::Method::POST => HttpMethod::Post,
        axum::http::Method::DELETE => HttpMethod::Delete,
        axum::http::Method::PUT => HttpMethod::Put,
        axum::http::Method::PATCH => HttpMethod::Patch,
        _ => return None,
    };
    match method {
        HttpMethod::Get => item.get.as_mut(),
        HttpMethod::Post => item.post.as_mut(),
        HttpMethod::Delete => item.delete.as_mut(),
        HttpMethod::Put => item.put.as_mut(),
        HttpMethod::Patch => item.patch.as_mut(),
        _ => None,
    }
}

/// utoipa documents an `Option<T>` body as "not required, and `null` or `T`";
/// an optional body here is absent or a `T` (`null` is refused with 422).
fn plain_optional_body(body: &mut utoipa::openapi::request_body::RequestBody) {
    use utoipa::openapi::schema::{Schema, Type};
    use utoipa::openapi::Required;
    if body.required == Some(Required::True) {
        return;
    }
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let is_null = |s: &RefOr<Schema>| {
            matches!(s, RefOr::T(Schema::Object(o))
                if o.schema_type == utoipa::openapi::schema::SchemaType::Type(Type::Null))
        };
        let rest: Vec<_> = one_of
            .items
            .iter()
            .filter(|s| !is_null(s))
            .cloned()
            .collect();
        if let [only] = &rest[..] {
            content.schema = Some(only.clone());
        }
    }
}

/// A response whose body is the `Error` schema.
fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    Detail::name(),
                ))))
                .build(),
        )
        .build()
        .into()
}

/// The document as JSON, built on first use.
pub fn json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}
