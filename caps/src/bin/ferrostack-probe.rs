//! Prints which privileged capabilities this machine offers Ferrostack.
//!
//! Exit code 0 when all are present, 1 when any is missing (each missing one is named with
//! the reason).

fn main() {
    let mut missing = 0;
    for cap in caps::Capability::ALL {
        match cap.probe() {
            Ok(()) => println!("  {cap:<9} ok"),
            Err(why) => {
                missing += 1;
                println!("  {cap:<9} MISSING: {why}");
            }
        }
    }
    std::process::exit(if missing == 0 { 0 } else { 1 });
}
