//! The Kafka/NATS CloudEvents header bindings: `name: value` header lines, a blank
//! line, then the record's value (binary mode when a `ce_specversion` header is
//! among them). Any input is an event or a rejection, never a panic.

use flow_archiver::config::InputConfig;
use flow_archiver::event::Decoder;

fn main() {
    let decoder = Decoder::new(&InputConfig::default());
    afl::fuzz!(|data: &[u8]| {
        let split = data.windows(2).position(|w| w == b"\n\n");
        let (head, value) = match split {
            Some(at) => (&data[..at], &data[at + 2..]),
            None => (&data[..0], data),
        };
        let headers: Vec<(String, Vec<u8>)> = head
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
                Some((name, line[colon + 1..].trim_ascii().to_vec()))
            })
            .collect();
        let mut payload = value.to_vec();
        let _ = decoder.decode_record(&mut payload, &headers, 1_800_000_000_000);
    });
}
