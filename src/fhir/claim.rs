//! FHIR `Claim`: read, search, create, version-checked update and soft delete, for billing
//! staff of the patient's facility (and patients, read-only, for their own claims) as the
//! policy matrix says. The R4 elements that this service fixes (type, use, priority,
//! insurance, created) are emitted with fixed values so the JSON is valid R4.

use super::elements::Elements;
use super::params;
use super::resource::{self, Descriptor, RecordResource};
use super::types::{bounded_len, bounded_text, input, invalid};
use crate::access::Principal;
use crate::db::claims::{self, Claim, ClaimTable, NewClaim, NewClaimItem};
use crate::error::AppError;
use crate::policy::View;
use serde::Deserialize;
use serde_json::{Number, Value, json};

pub const CLAIM_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/claim-type";
pub const PRIORITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/processpriority";
pub const CPT_SYSTEM: &str = "http://www.ama-assn.org/go/cpt";
pub const MAX_ITEMS: usize = 50;
/// The code system of `Claim.status` (FHIR R4 `fm-status`).
pub const STATUS_SYSTEM: &str = "http://hl7.org/fhir/fm-status";
const STATUSES: &[&str] = &["active", "cancelled", "draft", "entered-in-error"];
/// Largest amount: 10^10 - 0.01 in the currency's major unit.
const MAX_CENTS: i64 = 1_000_000_000_000;

/// A FHIR `Money` amount: non-negative, at most two decimals, below 10^10.
fn cents(field: &'static str, value: &Number) -> Result<i64, AppError> {
    let bad = || {
        invalid(
            field,
            "must be a non-negative amount with at most two decimals",
        )
    };
    let s = value.to_string();
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 10 || !digits(int) || frac.len() > 2 || !digits(frac) {
        return Err(bad());
    }
    let whole: i64 = int.parse().map_err(|_| bad())?;
    let frac_cents: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().map_err(|_| bad())? * 10,
        _ => frac.parse().map_err(|_| bad())?,
    };
    let total = whole * 100 + frac_cents;
    if total >= MAX_CENTS {
        return Err(bad());
    }
    Ok(total)
}

fn currency(field: &'static str, value: &str) -> Result<String, AppError> {
    let ok = value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase());
    ok.then(|| value.to_string())
        .ok_or_else(|| invalid(field, "must be an ISO 4217 code such as USD"))
}

fn money(cents: i64, currency: &str) -> Value {
    json!({ "value": cents as f64 / 100.0, "currency": currency })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimIn {
    resource_type: String,
    id: Option<String>,
    #[allow(dead_code)]
    meta: Option<serde::de::IgnoredAny>,
    status: String,
    #[serde(rename = "type")]
    claim_type: Option<input::CodeableConcept>,
    #[serde(rename = "use")]
    claim_use: Option<String>,
    patient: input::Reference,
    /// Server-set (the time the claim was recorded); accepted for round trips, ignored.
    #[allow(dead_code)]
    created: Option<serde::de::IgnoredAny>,
    provider: ProviderIn,
    /// Fixed by this service (normal priority, self-pay); accepted for round trips, ignored.
    #[allow(dead_code)]
    priority: Option<serde::de::IgnoredAny>,
    #[allow(dead_code)]
    insurance: Option<serde::de::IgnoredAny>,
    total: MoneyIn,
    item: Option<Vec<ItemIn>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderIn {
    display: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyIn {
    value: Number,
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ItemIn {
    sequence: u32,
    product_or_service: input::CodeableConcept,
    net: MoneyIn,
}

/// The Claim API, served by the generic handlers of [`super::resource`].
pub struct Claims;

impl RecordResource for Claims {
    const DESCRIPTOR: &'static Descriptor = &resource::CLAIM;
    const SUBJECT_FIELD: &'static str = "patient.reference";
    type Input = ClaimIn;
    type Table = ClaimTable;

    /// One view, the whole resource; the items are loaded only when `_elements` wants them.
    fn fields(view: View, elements: &Elements) -> Result<bool, AppError> {
        super::whole_view(Self::DESCRIPTOR.kind, view)?;
        Ok(elements.wants("item"))
    }
    fn input_id(input: &ClaimIn) -> Option<&str> {
        input.id.as_deref()
    }
    fn validate(input: ClaimIn, _: &Principal) -> Result<NewClaim, AppError> {
        if input.resource_type != "Claim" {
            return Err(invalid("resourceType", "must be Claim"));
        }
        if !STATUSES.contains(&input.status.as_str()) {
            return Err(invalid(
                "status",
                "must be active, cancelled, draft or entered-in-error",
            ));
        }
        if let Some(t) = &input.claim_type {
            let ok = t.coding.len() == 1
                && t.coding[0].system.as_deref() == Some(CLAIM_TYPE_SYSTEM)
                && t.coding[0].code == "professional";
            if !ok {
                return Err(invalid("type", "must be the claim-type code professional"));
            }
        }
        if input.claim_use.as_deref().is_some_and(|u| u != "claim") {
            return Err(invalid("use", "must be claim"));
        }
        let patient_id = params::patient_reference("patient.reference", &input.patient.reference)?;
        let provider = bounded_text("provider.display", &input.provider.display, 200)?;
        let cur = currency("total.currency", &input.total.currency)?;
        let total_cents = cents("total.value", &input.total.value)?;
        let items_in = input.item.unwrap_or_default();
        bounded_len("item", &items_in, MAX_ITEMS)?;
        let mut items = Vec::with_capacity(items_in.len());
        for item in &items_in {
            if item.sequence == 0 || item.sequence > 999 {
                return Err(invalid("item.sequence", "must be from 1 to 999"));
            }
            if items
                .iter()
                .any(|i: &NewClaimItem| i.seq == item.sequence as i32)
            {
                return Err(invalid("item.sequence", "must be unique"));
            }
            let coding = &item.product_or_service.coding;
            if coding.len() != 1 {
                return Err(invalid(
                    "item.productOrService.coding",
                    "must have one coding",
                ));
            }
            if coding[0].system.as_deref().is_some_and(|s| s != CPT_SYSTEM) {
                return Err(invalid(
                    "item.productOrService.coding.system",
                    "must be the CPT system",
                ));
            }
            let code = params::token("item.productOrService.coding.code", &coding[0].code, 20)?;
            if currency("item.net.currency", &item.net.currency)? != cur {
                return Err(invalid(
                    "item.net.currency",
                    "must be the currency of total",
                ));
            }
            items.push(NewClaimItem {
                seq: item.sequence as i32,
                code,
                amount_cents: cents("item.net.value", &item.net.value)?,
            });
        }
        if !items.is_empty() && items.iter().map(|i| i.amount_cents).sum::<i64>() != total_cents {
            return Err(invalid("total.value", "must be the sum of item.net"));
        }
        items.sort_by_key(|i| i.seq);
        Ok(NewClaim {
            patient_id: patient_id.into(),
            provider,
            status: input.status,
            total_cents,
            currency: cur,
            items,
        })
    }
    fn criteria(params: &[(&'static str, String)]) -> Result<claims::Criteria, AppError> {
        let patient = resource::subject_criterion(params)?;
        // `status=active,draft` (an OR), each optionally `system|code`.
        let mut status = Vec::new();
        if let Some(list) = params::single(params, "status")? {
            for s in params::or_values("status", list)? {
                let code = s
                    .strip_prefix(STATUS_SYSTEM)
                    .and_then(|r| r.strip_prefix('|'));
                let code = code.unwrap_or(&s);
                if !STATUSES.contains(&code) {
                    return Err(invalid(
                        "status",
                        "must be active, cancelled, draft or entered-in-error",
                    ));
                }
                status.push(code.to_string());
            }
        }
        Ok(claims::Criteria { patient, status })
    }
    fn to_fhir(c: &Claim) -> Value {
        let r = &c.row;
        let mut out = json!({
            "resourceType": "Claim",
            "id": r.id,
            "meta": { "versionId": r.version.to_string(), "lastUpdated": params::instant(&r.updated_at) },
            "status": r.status,
            "type": { "coding": [{ "system": CLAIM_TYPE_SYSTEM, "code": "professional" }] },
            "use": "claim",
            "patient": { "reference": format!("Patient/{}", r.patient_id) },
            "created": params::instant(&r.created_at),
            "provider": { "display": r.provider.expose() },
            "priority": { "coding": [{ "system": PRIORITY_SYSTEM, "code": "normal" }] },
            "insurance": [{ "sequence": 1, "focal": true, "coverage": { "display": "self-pay" } }],
            "total": money(*r.total_cents.expose(), &r.currency),
        });
        if !c.items.is_empty() {
            out["item"] = c
                .items
                .iter()
                .map(|i| {
                    json!({
                        "sequence": i.seq,
                        "productOrService": { "coding": [{ "system": CPT_SYSTEM, "code": i.code.expose() }] },
                        "net": money(*i.amount_cents.expose(), &r.currency),
                    })
                })
                .collect();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_amounts_are_exact_cents() {
        let n = |s: &str| serde_json::from_str::<Number>(s).unwrap();
        assert_eq!(cents("v", &n("12.34")).unwrap(), 1234);
        assert_eq!(cents("v", &n("12.5")).unwrap(), 1250);
        assert_eq!(cents("v", &n("7")).unwrap(), 700);
        assert_eq!(cents("v", &n("0")).unwrap(), 0);
        for bad in ["-1", "1.005", "1e30", "99999999999"] {
            assert!(cents("v", &n(bad)).is_err(), "{bad}");
        }
        assert!(currency("c", "USD").is_ok());
        assert!(currency("c", "usd").is_err());
        assert!(currency("c", "DOLLARS").is_err());
    }
}
