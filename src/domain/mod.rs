//! The shared vocabulary: typed ids and the request id. A floor of the module graph —
//! it imports nothing from the rest of the crate, so policy, audit, storage and HTTP can
//! all speak it without string round-trips.

pub mod clock;
pub mod ids;
pub mod request_id;

pub use clock::{Clock, SharedClock};
pub use ids::{
    FacilityId, GrantId, PatientId, PendingChangeId, RecordId, UserId, WebhookDeliveryId,
    WebhookEndpointId,
};
pub use request_id::RequestId;
