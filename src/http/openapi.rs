//! The OpenAPI 3.1 document of the HTTP API, served at `/api/v1/openapi.json`, generated
//! from the route table (`routes::ROUTES`): every route the router knows is documented,
//! with the schemas of the very serde types its handler decodes and renders (derived by
//! `utoipa`). `handlers::tests` checks real answers against these schemas.

use super::error::ErrorBody;
use super::routes::{schema, Answer, Components, ROUTES};
use super::security::Role;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{ResponseBuilder, ResponsesBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem,
    PathsBuilder, Required, Type,
};
use warp::http::Method;

fn http_method(m: &Method) -> HttpMethod {
    match *m {
        Method::POST => HttpMethod::Post,
        Method::DELETE => HttpMethod::Delete,
        Method::PUT => HttpMethod::Put,
        _ => HttpMethod::Get,
    }
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut components: Components = Vec::new();
    let error = schema::<ErrorBody>(&mut components);
    let mut paths = PathsBuilder::new();
    for spec in ROUTES {
        let mut op = OperationBuilder::new().summary(Some(spec.summary));
        let names = spec
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'));
        for (name, description) in names.zip(spec.path_params) {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(*description))
                    .schema(Some(
                        utoipa::openapi::ObjectBuilder::new().schema_type(Type::String),
                    )),
            );
        }
        for p in (spec.query)() {
            op = op.parameter(p);
        }
        if let Some(body) = spec.body {
            let required = if body.optional {
                Required::False
            } else {
                Required::True
            };
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(required))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some((body.schema)(&mut components)))
                            .build(),
                    )
                    .build(),
            ));
        }
        let ok = match spec.answer {
            Answer::Json(s) => ResponseBuilder::new().description("ok").content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(s(&mut components)))
                    .build(),
            ),
            Answer::JsonOrCsv(s) => ResponseBuilder::new()
                .description("ok (text/csv with format=csv)")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(s(&mut components)))
                        .build(),
                )
                .content("text/csv", ContentBuilder::new().build()),
            Answer::Text(ct) => ResponseBuilder::new()
                .description("ok")
                .content(ct, ContentBuilder::new().build()),
        };
        let err = || {
            ResponseBuilder::new().description("error").content(
                "application/json",
                ContentBuilder::new().schema(Some(error.clone())).build(),
            )
        };
        op = op.responses(
            ResponsesBuilder::new()
                .response("200", ok)
                .response("4XX", err())
                .response("5XX", err()),
        );
        op = match spec.role {
            Role::Anyone => op.securities(Some(Vec::<SecurityRequirement>::new())),
            Role::User => op,
            Role::Admin => {
                op.security(SecurityRequirement::new("adminToken", Vec::<String>::new()))
            }
        };
        paths = paths.path(spec.path, PathItem::new(http_method(&spec.method), op));
    }
    let bearer = || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("lockledger")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "A registry of file locks: see, explain and safely clear them.",
                )),
        )
        .paths(paths)
        .components(Some(
            ComponentsBuilder::new()
                .schemas_from_iter(components)
                .security_scheme("userToken", bearer())
                .security_scheme("adminToken", bearer())
                .build(),
        ))
        .security(Some(vec![SecurityRequirement::new(
            "userToken",
            Vec::<String>::new(),
        )]))
        .build()
}
