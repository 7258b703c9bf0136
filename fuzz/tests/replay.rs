//! Replays every kept fuzz input through its check: the corpus each target grew
//! (`corpus/<target>/`) and every crash libFuzzer found (`regressions/<target>/`, kept after the
//! fix). Runs on stable Rust without libFuzzer:
//! `cargo test --release --manifest-path fuzz/Cargo.toml` (also the first step of `make fuzz`).
use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else { continue };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        paths.sort();
        for p in paths {
            let data = fs::read(&p).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{target}: {} fails its check", p.display());
            }
            n += 1;
        }
    }
    assert!(n > 0, "no inputs kept for {target}");
}

#[test]
fn container() {
    replay("container", seqkv_fuzz::container);
}

#[test]
fn range_decoder() {
    replay("range_decoder", seqkv_fuzz::range_decoder);
}

#[test]
fn ppm_decode() {
    replay("ppm_decode", seqkv_fuzz::ppm_decode);
}

#[test]
fn trie_ops() {
    replay("trie_ops", seqkv_fuzz::trie_ops);
}
