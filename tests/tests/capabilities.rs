//! Reports every privileged capability this machine has; under `CI=true` all must be there.

use caps::Capability;

#[test]
fn every_capability_is_probed_and_reported() {
    let mut missing = Vec::new();
    for cap in Capability::ALL {
        let result = cap.probe();
        eprintln!(
            "capability {cap}: {}",
            match &result {
                Ok(()) => "present".to_string(),
                Err(why) => format!("missing ({why})"),
            }
        );
        if result.is_err() {
            missing.push(cap);
        }
    }
    // `require` panics under CI for the first missing capability, skips otherwise.
    for cap in missing {
        assert!(!caps::require(cap));
    }
}
