//! Reads the [`Facts`] of a batch: at most five queries, whatever the batch's size.

use super::config::WorkHours;
use super::rules::{Event, Facts};
use crate::domain::{PatientId, UserId};
use crate::error::AppError;
use crate::policy::Confidentiality;
use crate::schema::{care_team_members as ct, facilities, patients, role_assignments as ra, users};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use std::collections::{BTreeSet, HashMap};

pub fn load(conn: &mut PgConnection, events: &[Event]) -> Result<Facts, AppError> {
    let mut patient_ids = BTreeSet::new();
    let mut actors = BTreeSet::new();
    for e in events.iter().filter(|e| e.outcome == "permit") {
        if let Some(u) = e.actor_user_id
            && !e.patient_ids.is_empty()
        {
            actors.insert(u);
            patient_ids.extend(e.patient_ids.iter().copied());
        }
    }
    let mut facts = Facts::default();
    if patient_ids.is_empty() {
        return Ok(facts);
    }
    let patient_ids: Vec<PatientId> = patient_ids.into_iter().collect();
    let actors: Vec<UserId> = actors.into_iter().collect();

    let levels: Vec<(PatientId, String)> = patients::table
        .filter(patients::id.eq_any(&patient_ids))
        .filter(patients::confidentiality.ne("N"))
        .select((patients::id, patients::confidentiality))
        .load(conn)?;
    for (p, code) in levels {
        if let Some(level) = Confidentiality::from_code(&code) {
            facts.restricted.insert(p, level);
        }
    }

    // Accounts linked to a patient, and whether each holds a role other than `patient`.
    let workforce_role = diesel::dsl::exists(
        ra::table
            .filter(ra::user_id.eq(users::id))
            .filter(ra::role.ne("patient")),
    );
    let linked: Vec<(UserId, Option<PatientId>, bool)> = users::table
        .filter(users::patient_id.eq_any(&patient_ids))
        .select((users::id, users::patient_id, workforce_role))
        .load(conn)?;
    for (u, p, workforce) in linked {
        if let Some(p) = p {
            facts.linked.entry(p).or_default().push((u, workforce));
        }
    }

    let care: Vec<(PatientId, UserId)> = ct::table
        .filter(ct::patient_id.eq_any(&patient_ids))
        .filter(ct::user_id.eq_any(&actors))
        .select((ct::patient_id, ct::user_id))
        .load(conn)?;
    facts.care.extend(care);

    // The people's family-name indexes and their facility's working hours.
    type PersonRow = (
        UserId,
        Option<Vec<u8>>,
        Option<i16>,
        Option<i16>,
        Option<String>,
    );
    let people: Vec<PersonRow> = users::table
        .left_join(facilities::table.on(users::facility_id.eq(facilities::id.nullable())))
        .filter(users::id.eq_any(&actors))
        .select((
            users::id,
            users::family_index,
            facilities::work_start_hour.nullable(),
            facilities::work_end_hour.nullable(),
            facilities::time_zone.nullable(),
        ))
        .load(conn)?;
    let mut by_index: HashMap<Vec<u8>, Vec<UserId>> = HashMap::new();
    for (user, index, start, end, tz) in people {
        if let Some(hours) = WorkHours::of_facility(start, end, tz.as_deref()) {
            facts.hours.insert(user, hours);
        }
        if let Some(index) = index {
            by_index.entry(index).or_default().push(user);
        }
    }
    if !by_index.is_empty() {
        // Equality of keyed hashes, in the database: only matching patients come back.
        let indexes: Vec<&Vec<u8>> = by_index.keys().collect();
        let matching: Vec<(PatientId, Vec<u8>)> = patients::table
            .filter(patients::id.eq_any(&patient_ids))
            .filter(patients::family_index.eq_any(indexes))
            .select((patients::id, patients::family_index))
            .load(conn)?;
        for (p, index) in matching {
            for user in by_index.get(&index).into_iter().flatten() {
                facts.same_family.insert((p, *user));
            }
        }
    }
    Ok(facts)
}
