// The migrations are embedded in the binary (`db::MIGRATIONS`); without this, a new or
// edited migration would not rebuild the crate and tests would run the old schema.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
