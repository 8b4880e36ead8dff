//! The route table: every route, its method and its policy action, in one place. Routes
//! can only be added through [`Routes::add`], which requires an [`Action`]; the table is
//! also listed by [`table`] so tests can walk every registered route.

use crate::fhir::resource::FhirResource;
use crate::policy::Action;
use crate::{admin, console, fhir, health};
use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{Route, web};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
    pub action: Action,
}

/// Collects routes, then registers one actix resource per path (so that a path with
/// several methods answers 405, not 404, for the others).
#[derive(Default)]
pub struct Routes {
    entries: Vec<(RouteInfo, Route)>,
}

impl Routes {
    pub fn add<F, Args>(&mut self, method: Method, path: &'static str, action: Action, handler: F)
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        if method == Method::GET {
            // HEAD is answered like GET (without the body) wherever GET is.
            let head = web::method(Method::HEAD).to(handler.clone());
            let info = RouteInfo {
                method: Method::HEAD,
                path,
                action,
            };
            self.entries.push((info, head));
        }
        let route = web::method(method.clone()).to(handler);
        self.entries.push((
            RouteInfo {
                method,
                path,
                action,
            },
            route,
        ));
    }

    pub fn infos(&self) -> Vec<RouteInfo> {
        self.entries.iter().map(|(i, _)| i.clone()).collect()
    }

    pub fn register(self, cfg: &mut web::ServiceConfig) {
        let mut paths: Vec<&'static str> = Vec::new();
        for (info, _) in &self.entries {
            if !paths.contains(&info.path) {
                paths.push(info.path);
            }
        }
        let mut entries = self.entries;
        for path in paths {
            let (mine, rest): (Vec<_>, Vec<_>) =
                entries.into_iter().partition(|(i, _)| i.path == path);
            entries = rest;
            let actions: std::rc::Rc<Vec<(Method, Action)>> = std::rc::Rc::new(
                mine.iter()
                    .map(|(i, _)| (i.method.clone(), i.action))
                    .collect(),
            );
            let mut resource = web::resource(path).wrap(from_fn(move |req, next| {
                crate::access::guard::contain(req, next, actions.clone())
            }));
            for (_, route) in mine {
                resource = resource.route(route);
            }
            cfg.service(resource);
        }
    }
}

/// A FHIR resource's routes: one per interaction its descriptor lists, each served by the
/// generic handler of that interaction.
fn fhir_resource<R: FhirResource>(r: &mut Routes) {
    use crate::policy::Interaction as I;
    use fhir::resource::{
        create, delete, history, patch, read, search, search_post, update, vread,
    };
    let d = R::DESCRIPTOR;
    for &i in d.interactions {
        let action = Action::Fhir(d.kind, i);
        match i {
            I::Search => {
                r.add(Method::GET, d.path, action, search::<R>);
                // Registered before the item path, which would otherwise take `_search`.
                r.add(Method::POST, d.search_path, action, search_post::<R>);
            }
            I::Create => r.add(Method::POST, d.path, action, create::<R>),
            I::Read => {
                r.add(Method::GET, d.item_path, action, read::<R>);
                // The history and version reads are reads of the record.
                r.add(Method::GET, d.history_path, action, history::<R>);
                r.add(Method::GET, d.vread_path, action, vread::<R>);
                if let Some(path) = d.everything_path {
                    r.add(Method::GET, path, action, fhir::resource::everything);
                }
            }
            I::Update => {
                r.add(Method::PUT, d.item_path, action, update::<R>);
                r.add(Method::PATCH, d.item_path, action, patch::<R>);
            }
            I::Delete => r.add(Method::DELETE, d.item_path, action, delete::<R>),
        }
    }
}

/// Every route of the product.
/// One break-glass operation's route: its method and path from
/// [`crate::policy::break_glass::Operation::route`], its handler here.
fn break_glass_route(r: &mut Routes, op: crate::policy::break_glass::Operation) {
    use crate::policy::break_glass::Operation as Op;
    let (method, path) = op.route();
    let method = if method == "POST" {
        Method::POST
    } else {
        Method::GET
    };
    let action = Action::BreakGlass(op);
    match op {
        Op::Request => r.add(method, path, action, fhir::break_glass::request),
        Op::Status => r.add(method, path, action, fhir::break_glass::status),
        Op::End => r.add(method, path, action, fhir::break_glass::end),
        Op::Lookup => r.add(method, path, action, fhir::break_glass::lookup),
    }
}

pub fn configure(r: &mut Routes) {
    r.add(Method::GET, "/healthz", Action::Public, health::healthz);
    r.add(Method::GET, "/readyz", Action::Public, health::readyz);
    r.add(
        Method::GET,
        "/fhir/metadata",
        Action::Public,
        fhir::metadata::capability_statement,
    );
    // Before the Patient routes: `/fhir/Patient/{id}` would take `$break-glass-lookup`
    // for an id.
    break_glass_route(r, crate::policy::break_glass::Operation::Lookup);
    // Bulk Data `$export` (the Patient-level kick-off before `/fhir/Patient/{id}` too).
    {
        use crate::export::api;
        use crate::policy::export::{Level, Operation as Op};
        let export = |op| Action::Export(op);
        r.add(
            Method::GET,
            "/fhir/$export",
            export(Op::KickOff(Level::System)),
            api::kick_off_system,
        );
        r.add(
            Method::GET,
            "/fhir/Group/{id}/$export",
            export(Op::KickOff(Level::Group)),
            api::kick_off_group,
        );
        r.add(
            Method::GET,
            "/fhir/Patient/$export",
            export(Op::KickOff(Level::Patient)),
            api::kick_off_patient,
        );
        r.add(
            Method::GET,
            "/fhir/$export-status/{id}",
            export(Op::Status),
            api::status,
        );
        r.add(
            Method::DELETE,
            "/fhir/$export-status/{id}",
            export(Op::Cancel),
            api::cancel,
        );
        r.add(
            Method::GET,
            "/fhir/$export-file/{file}",
            export(Op::Download),
            api::download,
        );
    }
    // SMART App Launch discovery, at the FHIR base (as the specification places it) and
    // at the server root (where some clients look).
    for path in [
        "/fhir/.well-known/smart-configuration",
        "/.well-known/smart-configuration",
    ] {
        r.add(
            Method::GET,
            path,
            Action::Public,
            fhir::smart::smart_configuration,
        );
    }
    fhir_resource::<fhir::patient::Patients>(r);
    fhir_resource::<fhir::observation::Observations>(r);
    fhir_resource::<fhir::document_reference::DocumentReferences>(r);
    fhir_resource::<fhir::claim::Claims>(r);
    // The break-glass operations, from their one description (which the
    // CapabilityStatement lists too).
    for op in crate::policy::break_glass::Operation::ALL {
        if op != crate::policy::break_glass::Operation::Lookup {
            break_glass_route(r, op);
        }
    }
    // A patient's own access report: a Patient read for the pipeline, then own record only.
    r.add(
        Method::GET,
        "/fhir/Patient/{id}/$access-report",
        Action::Fhir(
            crate::policy::ResourceType::Patient,
            crate::policy::Interaction::Read,
        ),
        fhir::access_report::access_report,
    );
    // The audit trail as AuditEvent resources (reviewers all of it, patients their own).
    {
        use crate::policy::Interaction as I;
        r.add(
            Method::GET,
            "/fhir/AuditEvent",
            Action::AuditTrail(I::Search),
            fhir::audit_event::search,
        );
        r.add(
            Method::GET,
            "/fhir/AuditEvent/{id}",
            Action::AuditTrail(I::Read),
            fhir::audit_event::read,
        );
    }
    // Each admin route declares what it does: events for calls refused before the
    // handler (no admin role, bad body) name the real action.
    use crate::policy::admin::AdminAction as A;
    let admin = |a| Action::Admin(a);
    use admin::api;
    r.add(
        Method::GET,
        "/api/admin/users",
        admin(A::ListUsers),
        api::list_users,
    );
    r.add(
        Method::GET,
        "/api/admin/users/{id}",
        admin(A::ReadUser),
        api::get_user,
    );
    r.add(
        Method::POST,
        "/api/admin/users/{id}/roles",
        admin(A::ChangeRole),
        api::grant_role,
    );
    r.add(
        Method::DELETE,
        "/api/admin/users/{id}/roles/{role}",
        admin(A::ChangeRole),
        api::revoke_role,
    );
    r.add(
        Method::POST,
        "/api/admin/users/{id}/disable",
        admin(A::ChangeUser),
        api::disable_user,
    );
    r.add(
        Method::POST,
        "/api/admin/users/{id}/enable",
        admin(A::ChangeUser),
        api::enable_user,
    );
    r.add(
        Method::PUT,
        "/api/admin/users/{id}/facility",
        admin(A::ChangeUser),
        api::set_facility,
    );
    r.add(
        Method::PUT,
        "/api/admin/users/{id}/family-name",
        admin(A::ChangeUser),
        api::set_family_name,
    );
    r.add(
        Method::POST,
        "/api/admin/care-teams",
        admin(A::ChangeCareTeam),
        api::add_care_team,
    );
    r.add(
        Method::DELETE,
        "/api/admin/care-teams",
        admin(A::ChangeCareTeam),
        api::remove_care_team,
    );
    r.add(
        Method::GET,
        "/api/admin/facilities",
        admin(A::ListFacilities),
        api::list_facilities,
    );
    r.add(
        Method::POST,
        "/api/admin/facilities",
        admin(A::CreateFacility),
        api::create_facility,
    );
    r.add(
        Method::POST,
        "/api/admin/clients",
        admin(A::RegisterClient),
        api::create_client,
    );
    r.add(
        Method::PUT,
        "/api/admin/patients/{id}/confidentiality",
        admin(A::SetConfidentiality),
        api::set_confidentiality,
    );
    r.add(
        Method::GET,
        "/api/admin/patients/{id}/confidentiality",
        admin(A::ReadConfidentiality),
        api::get_confidentiality,
    );
    r.add(
        Method::POST,
        "/api/admin/break-glass/{id}/revoke",
        admin(A::RevokeBreakGlass),
        api::revoke_grant,
    );
    r.add(
        Method::POST,
        "/api/admin/webhooks",
        admin(A::CreateWebhookEndpoint),
        api::create_webhook_endpoint,
    );
    // Before `/api/admin/webhooks/{id}/{action}`, which would take `deliveries` for an id.
    r.add(
        Method::POST,
        "/api/admin/webhooks/deliveries/{id}/redeliver",
        admin(A::RedeliverWebhook),
        api::redeliver_webhook,
    );
    r.add(
        Method::POST,
        "/api/admin/webhooks/{id}/{action}",
        admin(A::ChangeWebhookEndpoint),
        api::change_webhook_endpoint,
    );
    r.add(Method::GET, "/", Action::Public, console::home);
    let sign_in = Action::ConsoleSignIn;
    r.add(
        Method::GET,
        "/console/signin",
        sign_in,
        console::auth::sign_in_page,
    );
    r.add(Method::GET, "/console/login", sign_in, console::auth::login);
    r.add(
        Method::GET,
        "/console/callback",
        sign_in,
        console::auth::callback,
    );
    r.add(
        Method::GET,
        "/console/totp",
        sign_in,
        console::auth::totp_form,
    );
    r.add(
        Method::POST,
        "/console/totp",
        sign_in,
        console::auth::totp_submit,
    );
    r.add(
        Method::GET,
        "/console/emergency",
        sign_in,
        console::emergency::form,
    );
    r.add(
        Method::POST,
        "/console/emergency",
        sign_in,
        console::emergency::sign_in,
    );
    r.add(
        Method::GET,
        "/console",
        Action::Console,
        console::pages::dashboard,
    );
    r.add(
        Method::POST,
        "/console/logout",
        Action::Console,
        console::auth::logout,
    );
    let pages = Action::Console;
    r.add(
        Method::GET,
        "/console/users",
        pages,
        console::pages::users_list,
    );
    r.add(
        Method::GET,
        "/console/users/{id}",
        pages,
        console::pages::user_page,
    );
    r.add(
        Method::POST,
        "/console/users/{id}/{action}",
        pages,
        console::pages::actions::user_action,
    );
    r.add(
        Method::GET,
        "/console/clients",
        pages,
        console::pages::clients_page,
    );
    r.add(
        Method::GET,
        "/console/webhooks",
        pages,
        console::pages::webhooks::webhooks_page,
    );
    r.add(
        Method::GET,
        "/console/exports",
        pages,
        console::pages::export_jobs::export_jobs_page,
    );
    r.add(
        Method::POST,
        "/console/webhooks",
        pages,
        console::pages::webhooks::create,
    );
    // Before `/console/webhooks/{id}/{action}`, which would take `deliveries` for an id.
    r.add(
        Method::POST,
        "/console/webhooks/deliveries/{id}/redeliver",
        pages,
        console::pages::webhooks::redeliver,
    );
    r.add(
        Method::POST,
        "/console/webhooks/{id}/{action}",
        pages,
        console::pages::webhooks::endpoint_action,
    );
    r.add(
        Method::POST,
        "/console/clients",
        pages,
        console::pages::actions::create_client,
    );
    r.add(
        Method::POST,
        "/console/clients/{id}/disable",
        pages,
        console::pages::actions::disable_client,
    );
    r.add(
        Method::GET,
        "/console/audit",
        pages,
        console::pages::review::search_page,
    );
    r.add(
        Method::POST,
        "/console/audit",
        pages,
        console::pages::review::search_by_mrn,
    );
    // Before `/console/audit/{seq}`, which would take `charts` for a sequence number.
    r.add(
        Method::GET,
        "/console/audit/charts",
        pages,
        console::pages::overview::charts_page,
    );
    r.add(
        Method::POST,
        "/console/audit/verify",
        pages,
        console::pages::verify::verify_now,
    );
    r.add(
        Method::POST,
        "/console/audit/export",
        pages,
        console::pages::export::export,
    );
    r.add(
        Method::GET,
        "/console/audit/{seq}",
        pages,
        console::pages::review::event_page,
    );
    r.add(
        Method::GET,
        "/console/patients/{id}/access",
        pages,
        console::pages::review::report_page,
    );
    r.add(
        Method::GET,
        "/console/patients/{id}/access.csv",
        pages,
        console::pages::review::report_csv,
    );
    r.add(
        Method::GET,
        "/console/people/{id}/activity",
        pages,
        console::pages::review::activity_page,
    );
    r.add(
        Method::GET,
        "/console/approvals",
        pages,
        console::pages::approvals_page,
    );
    r.add(
        Method::POST,
        "/console/approvals/{id}/{decision}",
        pages,
        console::pages::actions::decide_change,
    );
    r.add(
        Method::GET,
        "/console/break-glass",
        pages,
        console::pages::break_glass::grants_page,
    );
    r.add(
        Method::GET,
        "/console/break-glass/{id}",
        pages,
        console::pages::break_glass::grant_page,
    );
    r.add(
        Method::POST,
        "/console/break-glass/{id}/revoke",
        pages,
        console::pages::break_glass::revoke,
    );
    r.add(
        Method::POST,
        "/console/break-glass/{id}/review",
        pages,
        console::pages::break_glass::review,
    );
    r.add(
        Method::GET,
        "/console/alerts",
        pages,
        console::pages::alerts::alerts_page,
    );
    r.add(
        Method::GET,
        "/console/alerts/{id}",
        pages,
        console::pages::alerts::alert_page,
    );
    r.add(
        Method::GET,
        "/console/cases",
        pages,
        console::pages::cases::cases_page,
    );
    r.add(
        Method::POST,
        "/console/cases",
        pages,
        console::pages::cases::open_case,
    );
    r.add(
        Method::GET,
        "/console/cases/{id}",
        pages,
        console::pages::cases::case_page,
    );
    r.add(
        Method::POST,
        "/console/cases/{id}/{op}",
        pages,
        console::pages::cases::case_action,
    );
    r.add(
        Method::GET,
        "/console/suppressions",
        pages,
        console::pages::suppressions::suppressions_page,
    );
    r.add(
        Method::POST,
        "/console/suppressions",
        pages,
        console::pages::suppressions::create,
    );
    r.add(
        Method::POST,
        "/console/suppressions/{id}/revoke",
        pages,
        console::pages::suppressions::revoke,
    );
    r.add(
        Method::GET,
        "/console/reidentify",
        pages,
        console::pages::reidentify::form,
    );
    r.add(
        Method::POST,
        "/console/reidentify",
        pages,
        console::pages::reidentify::submit,
    );
    r.add(
        Method::POST,
        "/console/step-up",
        pages,
        console::stepup::submit,
    );
    r.add(
        Method::POST,
        "/console/step-up/cancel",
        pages,
        console::stepup::cancel,
    );
    r.add(
        Method::GET,
        "/static/{file}",
        Action::Public,
        console::static_file,
    );
}

/// Routes that exist only under `custodian dev` (added by [`super::build_app`] when the
/// startup options carry a development JWKS).
pub fn configure_dev(r: &mut Routes) {
    r.add(
        Method::GET,
        crate::dev::token::DEV_JWKS_PATH,
        Action::Public,
        dev_jwks,
    );
}

/// The development sign-in provider's routes (added by [`super::build_app`] only when the
/// start-up options carry a [`crate::dev::idp::DevIdp`], which only `custodian dev` builds).
pub fn configure_dev_idp(r: &mut Routes) {
    use crate::dev::idp;
    r.add(
        Method::GET,
        idp::DISCOVERY_PATH,
        Action::Public,
        idp::discovery,
    );
    r.add(Method::GET, idp::JWKS_PATH, Action::Public, idp::jwks);
    r.add(
        Method::GET,
        idp::AUTHORIZE_PATH,
        Action::Public,
        idp::authorize,
    );
    r.add(
        Method::POST,
        idp::AUTHORIZE_PATH,
        Action::Public,
        idp::choose,
    );
    r.add(Method::POST, idp::TOKEN_PATH, Action::Public, idp::token);
}

async fn dev_jwks(dev: web::Data<crate::dev::token::DevJwks>) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/jwk-set+json")
        .body(dev.document.as_str().to_owned())
}

/// The registered routes, for tests and documentation.
pub fn table() -> Vec<RouteInfo> {
    let mut r = Routes::default();
    configure(&mut r);
    r.infos()
}
