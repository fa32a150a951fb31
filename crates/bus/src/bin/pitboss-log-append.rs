//! Appends numbered records to an embedded log until killed, printing `acked <value>` for every
//! record only after `publish` confirmed it durable. Used by the SIGKILL durability test; also a
//! quick way to load a local log by hand: `pitboss-log-append DIR TAG`.

use std::io::Write;

use pitboss_bus::embedded::{EmbeddedBus, EmbeddedConfig};
use pitboss_bus::{Bus, OutRecord, Publisher};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One writer: batches of 25 records, acknowledged lines printed after each durable publish.
async fn writer(bus: EmbeddedBus, tag: String, w: u32) -> Result<(), Error> {
    let mut n: u64 = 0;
    loop {
        let batch: Vec<OutRecord> = (n..n + 25)
            .map(|i| OutRecord::new(format!("t:p{}", i % 16), format!("{tag}-w{w}-{i}")))
            .collect();
        let values: Vec<Vec<u8>> = batch.iter().map(|r| r.value.clone()).collect();
        bus.publish("events", batch).await?;
        let mut out = std::io::stdout().lock();
        for v in values {
            out.write_all(b"acked ")?;
            out.write_all(&v)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        n += 25;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(tag)) = (args.next(), args.next()) else {
        return Err("usage: pitboss-log-append DIR TAG".into());
    };
    let bus = EmbeddedBus::open(&dir, EmbeddedConfig::default())?;
    bus.create_topic("events", 4).await?;
    // Several concurrent writers, so kills land in the middle of group commits.
    let tasks: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(bus.clone(), tag.clone(), w)))
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}
