//! Network namespaces: created, usable, and gone after the fixture drops.

use tests::netns::{Netns, exists};

#[test]
fn namespace_is_created_configured_and_removed() {
    if !caps::require_all(&[caps::Capability::Root, caps::Capability::Netns]) {
        return;
    }
    let ns = Netns::new("smoke").expect("create netns");
    let name = ns.name().to_string();
    assert!(exists(&name), "{name} not listed after creation");

    // A fresh namespace has only a loopback device, down until we bring it up.
    let up = ns.exec(&["ip", "link", "set", "lo", "up"]).unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let links = ns.exec(&["ip", "-o", "link", "show"]).unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "unexpected devices: {links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let addrs = ns.exec(&["ip", "-o", "addr", "show", "dev", "lo"]).unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains("127.0.0.1/8"), "{addrs}");

    drop(ns);
    assert!(!exists(&name), "{name} still listed after drop");
}
