//! The `citron` command.
fn main() {
    println!("citron {}", env!("CARGO_PKG_VERSION"));
}
