//! The behaviour every store backend must have, as one test suite that the SQLite unit
//! tests and the PostgreSQL integration test both run.

use super::{Kind, Record, Store, StoreError, Write};

/// Runs every check against an empty store; panics on the first failure.
pub fn run(store: &dyn Store) {
    assert!(store.schema_version().unwrap() >= 1);
    meters(store);

    // Insert, get by id and name, list in id order, scoped list.
    let a = Record::new(
        Kind::Project,
        "p2",
        "d1",
        Some("alpha"),
        &serde_json::json!({"n": 1}),
    );
    let b = Record::new(
        Kind::Project,
        "p1",
        "d1",
        Some("beta"),
        &serde_json::json!({"n": 2}),
    );
    let c = Record::new(
        Kind::Project,
        "p3",
        "d2",
        Some("alpha"),
        &serde_json::json!({"n": 3}),
    );
    for r in [&a, &b, &c] {
        store.insert(r.clone()).unwrap();
    }
    assert_eq!(store.get(Kind::Project, "p2").unwrap().as_ref(), Some(&a));
    assert_eq!(
        store.get(Kind::User, "p2").unwrap(),
        None,
        "kinds are separate"
    );
    assert_eq!(
        store
            .get_by_name(Kind::Project, "d2", "alpha")
            .unwrap()
            .unwrap()
            .id,
        "p3"
    );
    assert_eq!(
        store.get_by_name(Kind::Project, "d3", "alpha").unwrap(),
        None
    );
    let ids: Vec<_> = store
        .list(Kind::Project, None)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["p1", "p2", "p3"]);
    assert_eq!(store.list(Kind::Project, Some("d1")).unwrap().len(), 2);
    assert!(store.list(Kind::Image, None).unwrap().is_empty());

    // Duplicate id or duplicate name in a scope: conflict, nothing written.
    let dup_id = Record::new(Kind::Project, "p1", "d9", Some("zeta"), &1);
    assert!(matches!(
        store.insert(dup_id),
        Err(StoreError::Conflict { kind: "project" })
    ));
    let dup_name = Record::new(Kind::Project, "p9", "d1", Some("alpha"), &1);
    assert!(matches!(
        store.insert(dup_name),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.get(Kind::Project, "p9").unwrap(), None);
    // Unnamed records never collide on name.
    store
        .insert(Record::new(Kind::Assignment, "x1", "s", None, &1))
        .unwrap();
    store
        .insert(Record::new(Kind::Assignment, "x2", "s", None, &2))
        .unwrap();

    // Compare-and-swap updates.
    let mut fresh = store.get(Kind::Project, "p1").unwrap().unwrap();
    let next = fresh.with_doc(Some("beta2"), &serde_json::json!({"n": 20}));
    store.update(next).unwrap();
    let got = store.get(Kind::Project, "p1").unwrap().unwrap();
    assert_eq!(got.version, 2);
    assert_eq!(got.name.as_deref(), Some("beta2"));
    fresh.doc = "{\"n\":21}".into();
    assert!(matches!(
        store.update(fresh.clone()),
        Err(StoreError::Stale { .. })
    ));
    assert_eq!(
        store.get(Kind::Project, "p1").unwrap().unwrap().doc,
        got.doc
    );
    // Renaming onto a taken name is a conflict.
    let clash = got.with_doc(Some("alpha"), &1);
    assert!(matches!(
        store.update(clash),
        Err(StoreError::Conflict { .. })
    ));
    // Updating something that does not exist is stale.
    let ghost = Record::new(Kind::Project, "nope", "d1", None, &1);
    assert!(matches!(store.update(ghost), Err(StoreError::Stale { .. })));

    // Batches are all-or-nothing.
    let batch = [
        Write::Insert(Record::new(Kind::Image, "i1", "p1", None, &1)),
        Write::Delete(Kind::Project, "p2".into()),
        Write::Insert(Record::new(Kind::Project, "p1", "d1", None, &1)),
    ];
    assert!(store.apply(&batch).is_err());
    assert_eq!(store.get(Kind::Image, "i1").unwrap(), None);
    assert!(store.get(Kind::Project, "p2").unwrap().is_some());
    let batch = [
        Write::Insert(Record::new(Kind::Image, "i1", "p1", None, &1)),
        Write::Delete(Kind::Project, "p2".into()),
    ];
    store.apply(&batch).unwrap();
    assert!(store.get(Kind::Image, "i1").unwrap().is_some());
    assert_eq!(store.get(Kind::Project, "p2").unwrap(), None);

    // Deleting twice is fine; the name is free again.
    store.delete(Kind::Project, "p2").unwrap();
    store
        .insert(Record::new(Kind::Project, "p4", "d1", Some("alpha"), &4))
        .unwrap();

    // Concurrent compare-and-swap: exactly one of two racing updates of a version wins.
    let base = store.get(Kind::Image, "i1").unwrap().unwrap();
    let wins = std::thread::scope(|s| {
        let t: Vec<_> = (0..2)
            .map(|i| {
                let r = base.with_doc(None, &(100 + i));
                s.spawn(move || store.update(r).is_ok())
            })
            .collect();
        t.into_iter()
            .filter_map(|h| h.join().unwrap().then_some(()))
            .count()
    });
    assert_eq!(wins, 1);
    assert_eq!(store.get(Kind::Image, "i1").unwrap().unwrap().version, 2);

    // Documents round-trip byte-exact, including non-ASCII.
    let text = "{\"name\":\"ümlaut ✓ \\\"q\\\"\"}";
    let mut r = Record::new(Kind::Setting, "s1", "", None, &0);
    r.doc = text.into();
    store.insert(r).unwrap();
    assert_eq!(store.get(Kind::Setting, "s1").unwrap().unwrap().doc, text);
}

/// Meter rows: append, filtered query in time order, atomic replace (retention).
fn meters(store: &dyn Store) {
    use crate::telemetry::{SampleFilter, SampleRow};
    let row = |res: &str, project: &str, g: i64, ts: i64, v: f64| SampleRow {
        meter: "conf.m".into(),
        resource_id: res.into(),
        project_id: project.into(),
        user_id: String::new(),
        mtype: "gauge".into(),
        unit: "B".into(),
        granularity: g,
        ts,
        count: 1,
        sum: v,
        min: v,
        max: v,
        last: v,
    };
    store
        .append_samples(&[
            row("r2", "p1", 0, 2_000, 2.5),
            row("r1", "p1", 0, 1_000, 1.0),
            row("r3", "p2", 0, 1_500, 3.0),
            row("r1", "p1", 60, 0, 9.0),
        ])
        .unwrap();
    let q = |f: &dyn Fn(&mut SampleFilter)| {
        let mut filter = SampleFilter::all();
        filter.meter = "conf.m".into();
        f(&mut filter);
        store.query_samples(&filter).unwrap()
    };
    let ts = |rows: Vec<SampleRow>| rows.iter().map(|r| r.ts).collect::<Vec<_>>();
    assert_eq!(ts(q(&|_| {})), [0, 1_000, 1_500, 2_000]);
    assert_eq!(ts(q(&|f| f.max_granularity = 0)), [1_000, 1_500, 2_000]);
    assert_eq!(ts(q(&|f| f.project_id = "p1".into())), [0, 1_000, 2_000]);
    assert_eq!(ts(q(&|f| f.resource_id = "r1".into())), [0, 1_000]);
    assert_eq!(
        ts(q(&|f| {
            f.start_ms = 1_000;
            f.end_ms = 2_000;
        })),
        [1_000, 1_500]
    );
    assert_eq!(ts(q(&|f| f.limit = 2)), [0, 1_000]);
    let got = q(&|f| f.resource_id = "r2".into());
    assert_eq!(got, [row("r2", "p1", 0, 2_000, 2.5)]);
    // Replace raw rows before 1.6 s by one aggregate.
    let mut agg = row("r1", "p1", 60, 60_000, 4.0);
    agg.count = 2;
    store.replace_samples(0, 1_600, &[agg.clone()]).unwrap();
    assert_eq!(ts(q(&|_| {})), [0, 2_000, 60_000]);
    assert_eq!(q(&|f| f.start_ms = 60_000), [agg]);
    store.replace_samples(60, i64::MAX, &[]).unwrap();
    store.replace_samples(0, i64::MAX, &[]).unwrap();
    assert!(q(&|_| {}).is_empty());
}
