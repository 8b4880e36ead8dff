//! Typed ids, so that a user id cannot be passed where a patient id is expected (the
//! argument-order trap of `add_to_care_team(patient, user)`). Each wraps the row's UUID
//! and maps to the same PostgreSQL `uuid` column through Diesel.

use diesel_derive_newtype::DieselNewType;
use std::fmt;
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, DieselNewType,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
            /// Parses an id from a path segment; anything that is not a UUID is `None`.
            pub fn parse(raw: &str) -> Option<Self> {
                Uuid::parse_str(raw).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

typed_id! {
    /// A person or service client known to Custodian (`users.id`).
    UserId,
    /// A patient record (`patients.id`).
    PatientId,
    /// A facility (`facilities.id`).
    FacilityId,
    /// A record that belongs to a patient: an Observation, DocumentReference or Claim.
    RecordId,
    /// A change waiting in the approval queue (`pending_changes.id`).
    PendingChangeId,
    /// A break-glass grant (`break_glass_grants.id`).
    GrantId,
    /// A webhook endpoint (`webhook_endpoints.id`).
    WebhookEndpointId,
    /// One message's delivery to one endpoint (`webhook_deliveries.id`).
    WebhookDeliveryId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_and_json() {
        let id = PatientId::new();
        assert_eq!(PatientId::parse(&id.to_string()), Some(id));
        assert_eq!(PatientId::parse("not-a-uuid"), None);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<PatientId>(&json).unwrap(), id);
    }
}
