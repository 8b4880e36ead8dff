//! Facilities (the organisations patients are registered at).

use crate::db::schema::facilities;
use crate::error::AppError;
use diesel::prelude::*;
use uuid::Uuid;

pub fn insert_facility(conn: &mut PgConnection, name: &str) -> Result<Uuid, AppError> {
    let id = Uuid::new_v4();
    diesel::insert_into(facilities::table)
        .values((facilities::id.eq(id), facilities::name.eq(name)))
        .execute(conn)?;
    Ok(id)
}
