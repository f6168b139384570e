//! The archive reader and manifest parser on a whole object: the first byte picks
//! zstd or gzip, the rest is the object. Any input is its parts or an error, never a
//! panic.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&pick, object)) = data.split_first() else {
            return;
        };
        let key = if pick % 2 == 0 {
            "seg.jsonl.zst"
        } else {
            "seg.jsonl.gz"
        };
        let _ = flow_archiver::archive::read_object_bytes(key, object);
    });
}
