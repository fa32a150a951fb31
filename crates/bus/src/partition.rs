//! Key-to-partition mapping for the embedded log: CRC-32 of the key modulo the partition count,
//! the same rule as librdkafka's default `consistent_random` partitioner for keyed records, so a
//! key lands on the same partition number in the embedded log and in Kafka.

use crate::Partition;

/// The partition of `key` in a topic of `partitions` partitions (`partitions` > 0).
pub fn partition_for(key: &str, partitions: u32) -> Partition {
    crc32fast::hash(key.as_bytes()) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_in_range() {
        for n in [1, 2, 3, 12, 64] {
            for key in ["acme:p1", "acme:p2", "", "tenant:ünï"] {
                let p = partition_for(key, n);
                assert!(p < n);
                assert_eq!(p, partition_for(key, n));
            }
        }
        // CRC-32/ISO-HDLC check value, as librdkafka's rd_crc32 computes it.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn spreads_keys() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_for(&format!("t:player-{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
