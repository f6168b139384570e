//! Configuration loading: any text is a configuration or an error naming a key,
//! never a panic.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let _ = flow_archiver::config::Config::from_sources(Some(&text), &[]);
    });
}
