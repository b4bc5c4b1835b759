//! Rebuilds the crate when a migration is added: `sqlx::migrate!()` embeds `migrations/` at
//! compile time, and Cargo reruns a macro only when a file it already knows changes. This is
//! the build script sqlx recommends (`sqlx migrate build-script`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
