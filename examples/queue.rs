//! The article's scenario, told in the terminal on the bare state machine (no server, no
//! network): three people open the same document; the first holds it, the others wait and are
//! told so; a reload keeps a place; leaving hands the document to the next in line, and everyone
//! waiting learns that the line moved.
//!
//! Run: `cargo run --example queue`

use std::time::{Duration, Instant};

use occupancy::{Config, Machine, Meta, NoticeKind, ResumeToken, SessionId};
use serde_json::json;

const DOC: &str = "document-42";

fn main() -> Result<(), occupancy::Error> {
    let mut config = Config::default();
    config.grace = Duration::from_secs(5);
    let mut m = Machine::new(config)?;
    let mut now = Instant::now();
    let names = ["", "Alice", "Bob", "Carol"];
    let person = |s: SessionId| names[s.0 as usize];

    let [alice, bob, carol] = [1, 2, 3].map(SessionId);
    for s in [alice, bob, carol] {
        let meta = Meta::from_value(json!({ "name": person(s) }))?;
        m.connect(s, Some(person(s)), meta, ResumeToken(s.0 as u128))?;
    }

    let show = |m: &mut Machine, what: &str| {
        println!("\n▶ {what}");
        for n in m.drain_notices() {
            let who = person(n.session);
            match n.kind {
                NoticeKind::Occupied {
                    holder, position, ..
                } => println!(
                    "  {who}: occupied by {}; you are #{position} in line",
                    holder.id
                ),
                NoticeKind::Released { .. } => println!("  {who}: released — you hold {}", n.room),
                NoticeKind::Displaced { by, position, .. } => {
                    println!(
                        "  {who}: {by} took over; you are #{position} in line",
                        by = by.id
                    )
                }
                NoticeKind::Presence(p) => {
                    let holder = p.body.holder.as_ref().map(|h| h.id.to_string());
                    println!(
                        "  {who}: presence v{}: holder {}, your place {}, {} waiting",
                        p.body.version,
                        holder.as_deref().unwrap_or("nobody"),
                        p.position.map_or("-".into(), |p| p.to_string()),
                        p.body.waiting
                    )
                }
                // `NoticeKind` is `#[non_exhaustive]`: later versions may add kinds.
                other => println!("  {who}: {other:?}"),
            }
        }
    };

    m.join(alice, DOC, None)?;
    show(&mut m, "Alice opens the document");
    m.join(bob, DOC, None)?;
    show(&mut m, "Bob opens it");
    m.join(bob, DOC, None)?;
    show(
        &mut m,
        "Bob's page mounts twice (React StrictMode): nothing happens",
    );
    m.join(carol, DOC, None)?;
    show(&mut m, "Carol opens it");

    m.disconnect(bob, now)?;
    now += Duration::from_secs(1);
    m.handle_timeout(now);
    show(&mut m, "Bob reloads the page: his connection drops...");
    let r = m.resume(ResumeToken(2), ResumeToken(22), now)?;
    show(
        &mut m,
        &format!(
            "...and he is back a second later with his resume token: place #{}",
            r.rooms[0].position
        ),
    );

    m.leave(alice, DOC)?;
    show(&mut m, "Alice navigates away (no disconnect needed)");

    m.takeover(carol, DOC)?;
    show(&mut m, "Carol takes over (the application allowed it)");

    m.disconnect(carol, now)?;
    show(
        &mut m,
        "Carol's network drops silently; her place is kept for the grace...",
    );
    now += Duration::from_secs(5);
    m.handle_timeout(now);
    show(&mut m, "...5 s later the grace is over");

    println!(
        "\nholder now: {}",
        m.holder(DOC).map(|p| p.id.to_string()).unwrap_or_default()
    );
    Ok(())
}
