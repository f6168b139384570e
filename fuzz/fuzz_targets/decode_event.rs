//! The event decoder, all three input formats: the first byte picks the format, the
//! rest is the record. Any input is an event or a rejection, never a panic.

use flow_archiver::config::{InputConfig, InputFormat};
use flow_archiver::event::Decoder;

fn main() {
    let decoders: Vec<Decoder> = [
        InputFormat::Cloudevents,
        InputFormat::Plain,
        InputFormat::Argo,
    ]
    .into_iter()
    .map(|format| {
        Decoder::new(&InputConfig {
            format,
            ..InputConfig::default()
        })
    })
    .collect();
    afl::fuzz!(|data: &[u8]| {
        let Some((&pick, record)) = data.split_first() else {
            return;
        };
        let mut payload = record.to_vec();
        let _ = decoders[pick as usize % 3].decode_record(&mut payload, &[], 1_800_000_000_000);
    });
}
