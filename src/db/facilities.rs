//! Facilities (the organisations patients are registered at).

use crate::db::schema::facilities;
use crate::domain::FacilityId;
use crate::error::AppError;
use diesel::prelude::*;

pub fn insert_facility(conn: &mut PgConnection, name: &str) -> Result<FacilityId, AppError> {
    let id = FacilityId::new();
    diesel::insert_into(facilities::table)
        .values((facilities::id.eq(id), facilities::name.eq(name)))
        .execute(conn)?;
    Ok(id)
}
