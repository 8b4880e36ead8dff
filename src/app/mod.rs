//! The composition root: the route table ([`routes`]) and the app factory that puts every
//! route behind the edge middleware. Nothing below imports this module.

pub mod keys;
pub mod routes;
pub mod startup;

pub use startup::{Application, Options};

use crate::config::Config;
use crate::state::AppState;
use crate::web::{edge, json, ratelimit};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, middleware::from_fn, web};

/// Routes added by tests on top of the product's table (for example a handler that
/// panics); they pass through exactly the same middleware.
pub type ExtraRoutes = fn(&mut routes::Routes);

/// Builds the HTTPS application: every route behind the edge middleware.
pub fn build_app(
    state: web::Data<AppState>,
    address_limit: Option<std::sync::Arc<ratelimit::RateLimiter>>,
    config: Config,
    extra: Option<ExtraRoutes>,
    dev_jwks: Option<crate::dev::token::DevJwks>,
    dev_idp: Option<std::sync::Arc<crate::dev::idp::DevIdp>>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let settings = edge::EdgeSettings {
        hsts: true,
        body_limit: config.server.body_limit_bytes,
        cors_allowed_origins: config.server.cors_allowed_origins.clone(),
        address_limit: address_limit.clone(),
    };
    let json_limits = json::JsonLimits {
        max_depth: config.server.json_max_depth,
    };
    let fhir = crate::fhir::config::FhirSettings::new(
        &config.server.public_url,
        &config.fhir,
        !config.server.cors_allowed_origins.is_empty(),
    );
    let export = crate::export::api::ExportSettings {
        config: config.export.clone(),
        base: fhir.base.clone(),
        has_key: config
            .crypto
            .export_key
            .as_ref()
            .is_some_and(|k| !k.expose().trim().is_empty()),
    };
    let mut table = routes::Routes::default();
    routes::configure(&mut table);
    if let Some(extra) = extra {
        extra(&mut table);
    }
    let mut app = App::new();
    if let Some(dev) = dev_jwks {
        // Only `custodian dev` gets here (startup Options); `serve` never does.
        routes::configure_dev(&mut table);
        app = app.app_data(web::Data::new(dev));
    }
    if let Some(idp) = dev_idp {
        // Likewise only `custodian dev`: the development sign-in provider, and the home
        // page's notes on the demo people.
        routes::configure_dev_idp(&mut table);
        app = app
            .app_data(web::Data::new(crate::dev::idp::home_notice(&idp)))
            .app_data(web::Data::from(idp));
    }
    app.app_data(state)
        .app_data(web::Data::new(settings))
        .app_data(web::Data::new(json_limits))
        .app_data(web::Data::new(fhir))
        .app_data(web::Data::new(export))
        .app_data(web::PayloadConfig::new(config.server.body_limit_bytes))
        .wrap(from_fn(edge::edge))
        .configure(|cfg| table.register(cfg))
        .default_service(web::to(not_found))
}

async fn not_found() -> Result<actix_web::HttpResponse, crate::error::AppError> {
    Err(crate::error::AppError::not_found())
}
